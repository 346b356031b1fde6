"""Every option of every config group, and every exp, composes against the schema; bad input fails in one line."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import wideseek_exp.conf  # noqa: F401  (registers base_config)
from wideseek_exp.conf import Config

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["model", "engine", "search", "agent", "reward", "judge", "data", "trainer"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def test_every_group_of_the_schema_has_a_folder_and_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no options"
        assert group in Config.__dataclass_fields__


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_with(f"{group}={option}")
    assert cfg[group].name == option, f"conf/{group}/{option}.yaml must set name: {option}"
    OmegaConf.to_container(cfg, resolve=True)
    assert not OmegaConf.missing_keys(cfg), OmegaConf.missing_keys(cfg)


@pytest.mark.parametrize("exp", options("exp"))
def test_every_exp_composes(exp):
    cfg = compose_with(f"+exp={exp}", hydra=True)
    assert cfg.exp.name == exp
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(job, resolve=True)
    assert not OmegaConf.missing_keys(job)


def test_exp_is_not_in_the_defaults_list():
    defaults = OmegaConf.load(CONF / "config.yaml").defaults
    names = [next(iter(d)) if OmegaConf.is_dict(d) else str(d) for d in defaults]
    assert "model" in names and "exp" not in names


def test_width_sweep_declares_its_widths_and_command_line_wins():
    cfg = compose_with("+exp=width_sweep", hydra=True)
    assert str(cfg.hydra.sweeper.params.subagents) == "1,2,4,8"
    assert cfg.task.value == "eval"
    assert compose_with("+exp=width_sweep", "subagents=2").subagents == 2


def test_the_agent_samples_at_the_models_temperature_unless_told_otherwise():
    assert compose_with().agent.temperature == 0.3  # the warm start's own setting (conf/model/tiny.yaml)
    assert compose_with("model=qwen3_4b").agent.temperature == 1.0
    assert compose_with("model=tiny", "agent.temperature=0.7").agent.temperature == 0.7
    assert compose_with("model=tiny", "model.temperature=0.5").agent.temperature == 0.5


def test_defaults_are_the_offline_stack():
    cfg = compose_with()
    assert (cfg.model.name, cfg.engine.name, cfg.search.name, cfg.judge.name, cfg.data.name) == (
        "tiny", "hf", "local", "exact", "miniweb")
    assert cfg.subagents == 4 and cfg.agent.max_subagents_per_call == 4
    assert compose_with("subagents=8").agent.max_subagents_per_call == 8


@pytest.mark.parametrize(
    "override,expected",
    [
        ("nosuchkey=1", "unknown config key 'nosuchkey'"),
        ("engine.batch=3", "unknown config key 'engine.batch'"),
        ("seed=abc", "seed: Value 'abc'"),
        ("subagents=many", "subagents: Value 'many'"),
        ("task=fly", "task: Invalid value 'fly'"),
        ("model=nosuch", "Could not find 'model/nosuch'"),
        ("+exp=nosuch", "Could not find 'exp/nosuch'"),
        ("model.path=???", "config key 'model.path' is required"),
        ("subagents=0", "config key 'subagents' must be at least 1"),
        ("agent.top_p=1.5", "config key 'agent.top_p' must be in (0, 1]"),
        ("trainer.weighting=bad", "trainer.weighting: Invalid value 'bad'"),
        ("sft.rows=episode", "config key 'sft.rows' must be agent or turn"),
        ("sft.list_drill_replay=1.0", "config key 'sft.list_drill_replay' must be in [0, 1)"),
        ("sft.list_drill_steps=-1", "config key 'sft.list_drill_steps' must be >= 0"),
    ],
)
def test_bad_input_fails_with_one_clear_line(cli, override, expected):
    result = cli(override, "tracking.enabled=false")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_the_schema_names_every_weighting_the_loss_implements():
    from wideseek_exp.conf import Weighting
    from wideseek_exp.rl.advantages import WEIGHTINGS

    assert tuple(Weighting) == WEIGHTINGS


@pytest.mark.parametrize("overrides,expected", [
    (("task=train", "engine=openai"), "task=train generates with the policy being trained: engine=hf or engine=vllm"),
    (("exp.train=true", "trainer.num_generations=1"), "config key 'trainer.num_generations' must be at least 2"),
])
def test_training_settings_fail_at_start_up_in_one_line(cli, overrides, expected):
    result = cli(*overrides, "tracking.enabled=false")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
