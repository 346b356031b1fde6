"""task=data: table sources, the three-stage pipeline with a deterministic generator double (agreement
by our scorer, the size and difficulty filters, drop reasons), the call cache and resume, the
output layout, the data card and the datasets copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from synth_double import Mode, TableDouble

from wideseek_exp import WideseekError
from wideseek_exp.conf import DataConfig, SynthesisConfig
from wideseek_exp.scoring.judges import ExactJudge
from wideseek_exp.tasks.loaders import load_task_set
from wideseek_exp.tasks.sources import read_hybridqa, read_hybridqa_table
from wideseek_exp.tasks.synthesis import Synthesizer, card, parse_answer, parse_plan, render_card, save_dataset
from wideseek_exp.tasks.textgen import CACHE_FILE, CachedGenerator, TextReply

FIXTURE = Path(__file__).parent / "fixtures" / "hybridqa"
TABLES, PASSAGES = FIXTURE / "tables_tok", FIXTURE / "request_tok"

LIGHTHOUSES, TOWNS = "Lighthouses of the Inner Coast", "Towns of Ardent Vale"
RIVERS, COMETS = "Rivers of Tiny Shire", "Periodic comets of the Kell survey"
# Lighthouses: 12 rows x 3 columns, 3 cells disputed -> item F1 33/36 = 0.917 (kept at 0.9).
# Towns: 10 rows x 3 columns, 4 cells disputed -> 26/30 = 0.867 (dropped at 0.9, kept at 0.85).
# Rivers: 2 rows, too small a source. Comets: the closed-book baseline knows the whole table.
MODES = {LIGHTHOUSES: Mode(corrupt_cells=3), TOWNS: Mode(corrupt_cells=4), COMETS: Mode(baseline_knows=True)}


def settings(**overrides):
    return OmegaConf.merge(OmegaConf.structured(SynthesisConfig),
                           {"source": "hybridqa", "test_fraction": 0.0, "max_concurrency": 2, **overrides})


def run(out: Path, modes=MODES, double=None, **overrides):
    tables = list(read_hybridqa(TABLES, PASSAGES))
    double = double or TableDouble(tables, modes)
    s = settings(**overrides)
    generator = CachedGenerator(double, out / CACHE_FILE, s.max_concurrency)
    Synthesizer(s, generator, ExactJudge(), out, "hybridqa").run(tables)
    return double, generator


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def drops_by_table(out: Path) -> dict[str, dict]:
    return {d["table_id"]: d for d in lines(out / "drops.jsonl")}


# ---- sources --------------------------------------------------------------------------------------


def test_hybridqa_layout_is_read_with_links_and_passages():
    tables = {t.title: t for t in read_hybridqa(TABLES, PASSAGES)}
    assert set(tables) == {LIGHTHOUSES, TOWNS, RIVERS, COMETS}
    light = tables[LIGHTHOUSES]
    assert light.header == ["Name", "Lit", "Height (m)", "County"]
    assert len(light.rows) == 12 and light.rows[1][0] == "Briar Head"
    assert light.links[1][0] == ["/wiki/Briar_Head"] and light.links[1][1] == []
    (link, passage), = light.row_passages(1)
    assert link == "/wiki/Briar_Head" and "first lit in 1857" in passage
    assert tables[COMETS].passages == {}


def test_a_ragged_hybridqa_row_names_the_file_and_row(tmp_path):
    raw = json.loads((TABLES / "Towns_of_Ardent_Vale_0.json").read_text())
    raw["data"][3] = raw["data"][3][:2]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(WideseekError, match=r"bad.json data row 3: 2 cells for 4 header columns"):
        read_hybridqa_table(tmp_path / "bad.json", None)


# ---- parsing the generator's replies ---------------------------------------------------------------


def test_plan_gets_our_format_instruction_and_rejects_bad_plans():
    plan = parse_plan('```json\n{"intent": "i", "columns": ["Town", "Population"], "unique_columns": ["Town"], '
                      '"query": "Which towns?"}\n```')
    assert plan.query.startswith("Which towns?") and "| Town | Population |" in plan.query and "```markdown" in plan.query
    assert plan.unique_columns == ["town"]
    for bad, why in ((r'{"columns": ["A", "B"]}', "no ```json"),
                     ('```json\n{"columns": ["A"], "unique_columns": ["A"], "query": "q"}\n```', "two distinct"),
                     ('```json\n{"columns": ["A", "B"], "unique_columns": ["C"], "query": "q"}\n```', "not among"),
                     ('```json\n{"columns": ["A", "B"], "unique_columns": ["A"], "query": ""}\n```', "no query")):
        with pytest.raises(ValueError, match=why):
            parse_plan(bad)


def test_answer_needs_a_table_and_its_unique_columns():
    answer = parse_answer("```markdown\n| Town | Population |\n|---|---|\n| Foxley | 5950 |\n```\nUnique columns: Town")
    assert answer.rows == [["Foxley", "5950"]] and answer.unique_columns == ["town"]
    with pytest.raises(ValueError, match="Unique columns"):
        parse_answer("```markdown\n| Town |\n|---|\n| Foxley |\n```")
    with pytest.raises(ValueError, match="no readable markdown table"):
        parse_answer("no table here\nUnique columns: Town")


# ---- the pipeline -------------------------------------------------------------------------------


def test_agreement_size_and_difficulty_filters_with_reasons(tmp_path):
    run(tmp_path)
    kept = lines(tmp_path / "train.jsonl")
    assert [r["synthesis"]["table_id"] for r in kept] == ["Lighthouses_of_the_Inner_Coast_0"]
    record = kept[0]
    assert record["synthesis"]["agreement"] == pytest.approx(33 / 36)
    assert record["synthesis"]["baseline_item_f1"] == 0.0
    assert record["is_markdown"] is True and record["language"] == "en"
    assert record["unique_columns"] == ["Name"]
    assert record["evaluation"]["required"] == ["name", "lit", "height(m)"]
    assert "| Name | Lit | Height (m) |" in record["question"]  # the query names its columns
    assert record["answer"].count("\n") == 13  # header, separator, 12 rows: answer 1 is the gold

    drops = drops_by_table(tmp_path)
    assert drops["Towns_of_Ardent_Vale_0"]["stage"] == "agreement"
    assert drops["Towns_of_Ardent_Vale_0"]["code"] == "low_agreement"
    assert drops["Towns_of_Ardent_Vale_0"]["agreement"] == pytest.approx(26 / 30)
    assert (drops["Rivers_of_Tiny_Shire_0"]["stage"], drops["Rivers_of_Tiny_Shire_0"]["code"]) == ("query", "small_source")
    comets = drops["Periodic_comets_of_the_Kell_survey_0"]
    assert (comets["stage"], comets["code"], comets["baseline_item_f1"]) == ("difficulty", "too_easy", 1.0)


def test_the_agreement_threshold_decides(tmp_path):
    run(tmp_path, agreement_threshold=0.85)
    kept = {r["synthesis"]["table_id"] for r in lines(tmp_path / "train.jsonl")}
    assert kept == {"Lighthouses_of_the_Inner_Coast_0", "Towns_of_Ardent_Vale_0"}


def test_baseline_none_skips_the_difficulty_filter(tmp_path):
    double, _ = run(tmp_path, baseline="none")
    assert double.calls["baseline"] == 0
    kept = {r["synthesis"]["table_id"] for r in lines(tmp_path / "train.jsonl")}
    assert "Periodic_comets_of_the_Kell_survey_0" in kept


@pytest.mark.parametrize("mode, stage, code", [
    (Mode(plan="garbage"), "query", "bad_plan"),
    (Mode(plan="stray_key"), "query", "bad_plan"),
    (Mode(no_table_2=True), "answer", "no_table"),
    (Mode(keys_2="Name, Lit"), "answer", "key_disagreement"),
    (Mode(rows=2), "size", "too_few_rows"),
])
def test_every_drop_records_its_stage_and_reason(tmp_path, mode, stage, code):
    run(tmp_path, modes={LIGHTHOUSES: mode})
    drop = drops_by_table(tmp_path)["Lighthouses_of_the_Inner_Coast_0"]
    assert (drop["stage"], drop["code"]) == (stage, code) and drop["reason"]


def test_rerun_is_free_and_an_interrupted_run_resumes(tmp_path):
    clean_dir, broken_dir = tmp_path / "clean", tmp_path / "broken"
    clean, _ = run(clean_dir)
    again, generator = run(clean_dir)
    assert sum(again.calls.values()) == 0  # every task decided: nothing asked

    class Crash(TableDouble):
        def generate(self, requests):
            if sum(self.calls.values()) >= 6:
                raise KeyboardInterrupt
            return super().generate(requests)

    tables = list(read_hybridqa(TABLES, PASSAGES))
    with pytest.raises(KeyboardInterrupt):
        run(broken_dir, double=Crash(tables, MODES))
    first_part = len(lines(broken_dir / CACHE_FILE))  # calls answered before the crash
    resumed, _ = run(broken_dir)
    # Calls answered before the crash come from the cache: the two runs together asked what one run asks.
    assert first_part + sum(resumed.calls.values()) == sum(clean.calls.values())
    strip = lambda path: sorted(json.dumps(x, sort_keys=True) for x in lines(path))  # noqa: E731
    for name in ("train.jsonl", "drops.jsonl"):
        assert strip(broken_dir / name) == strip(clean_dir / name)


def test_a_stopped_data_job_names_what_it_kept(tmp_path):
    from scripted_engine import world_config

    from wideseek_exp.jobs.data import interrupted

    run(tmp_path)
    cfg = OmegaConf.merge(world_config(), {"synthesis": {"out_dir": str(tmp_path)}})
    kept, resume = interrupted(cfg, None)
    calls = len(lines(tmp_path / CACHE_FILE))
    assert kept == f"1 tasks kept and 3 dropped, {calls} answered generator calls in {tmp_path}" and resume == []
    assert calls > 0


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    run(tmp_path)
    with pytest.raises(WideseekError, match="agreement_threshold"):
        run(tmp_path, agreement_threshold=0.5)


def test_card_counts_histograms_tokens_and_cost(tmp_path):
    _, generator = run(tmp_path)
    summary = card(tmp_path, generator.usage, (0.001, 0.002))
    assert summary["candidates"] == 4 and summary["kept"] == {"train": 1, "test": 0}
    assert summary["passed"] == {"query": 3, "answer": 3, "size": 3, "agreement": 2, "difficulty": 1}
    assert summary["drop_reasons"] == {"agreement/low_agreement": 1, "difficulty/too_easy": 1, "query/small_source": 1}
    assert summary["agreement_histogram"]["0.8-0.9"] == 1 and summary["agreement_histogram"]["0.9-1"] == 1
    assert summary["agreement_histogram"]["1"] == 1  # comets: the answers agree, the task is too easy
    assert summary["row_histogram"]["11-20"] == 1
    cache = lines(tmp_path / CACHE_FILE)
    answer = summary["usage"]["answer"]
    assert answer["generated_calls"] == 6 and answer["calls_this_run"] == 6
    tokens = [e for e in cache if e["stage"] == "answer"]
    assert answer["prompt_tokens"] == sum(e["prompt_tokens"] for e in tokens)
    assert answer["cost"] == pytest.approx(0.001 * answer["prompt_tokens"] + 0.002 * answer["completion_tokens"])
    text = render_card(summary, "test card")
    assert "| agreement/low_agreement | 1 |" in text and "## Rows of the kept tables" in text


def test_output_loads_as_wideseek_train_from_jsonl_and_datasets(tmp_path):
    run(tmp_path, agreement_threshold=0.85, baseline="none")
    folder = save_dataset(tmp_path)
    for path in (tmp_path, folder):
        data = OmegaConf.merge(OmegaConf.structured(DataConfig), {"name": "wideseek_train", "path": str(path)})
        tasks = load_task_set(data, "train")
        assert len(tasks) == 3 and all(t.is_table for t in tasks)
        light = next(t for t in tasks if "Lighthouses" in t.instance_id)
        assert light.unique_columns == ["name"] and len(light.gold_rows) == 12


def test_miniweb_tables_synthesise_with_full_agreement(tmp_path):
    from wideseek_exp.tasks.sources import miniweb_tables

    tables = []
    for table in miniweb_tables():
        if len(table.rows) >= 5 and len(table.header) >= 3:
            tables.append(table)
        if len(tables) == 3:
            break
    assert all(table.passages and table.links[0][0][0] in table.passages for table in tables)
    double = TableDouble(tables)
    generator = CachedGenerator(double, tmp_path / CACHE_FILE, 4)
    Synthesizer(settings(source="miniweb"), generator, ExactJudge(), tmp_path, "miniweb").run(tables)
    kept = lines(tmp_path / "train.jsonl")
    assert len(kept) == 3 and all(r["synthesis"]["agreement"] == 1.0 for r in kept)


# ---- the job: run_data with MLflow, and the command line ---------------------------------------------


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).parent.parent / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=["task=data", *overrides])


def test_run_data_writes_card_and_dataset_and_logs_tokens_to_mlflow(tmp_path):
    import mlflow

    from wideseek_exp.jobs.data import run as run_data
    from wideseek_exp.tracking import job_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "synth"
    cfg = compose("synthesis.source=hybridqa", f"synthesis.hybridqa_tables={TABLES}",
                  f"synthesis.hybridqa_passages={PASSAGES}", f"synthesis.out_dir={out}", "synthesis.test_fraction=0",
                  "synthesis.price_per_input_token=0.5", "tracking.enabled=true", f"tracking.uri={uri}")
    double = TableDouble(list(read_hybridqa(TABLES, PASSAGES)), MODES)
    with job_run(cfg, tmp_path / "job") as job:
        summary = run_data(cfg, job, tmp_path / "job", generator=double)
        run_id = job.run_id
    assert summary["kept"]["train"] == 1
    assert (out / "card.md").is_file() and (out / "dataset" / "dataset_dict.json").is_file()
    metrics = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    assert metrics["data.kept.train"] == 1 and metrics["data.dropped.difficulty.too_easy"] == 1
    assert metrics["data.query.prompt_tokens"] == summary["usage"]["query"]["prompt_tokens"] > 0
    assert metrics["data.query.cost"] == pytest.approx(0.5 * metrics["data.query.prompt_tokens"])
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id)}
    assert {"card.md", "card.json", "drops.jsonl"} <= artifacts


@pytest.mark.slow
def test_task_data_on_the_tiny_model_from_the_command_line(tmp_path):
    from conftest import run_cli

    args = ("task=data", "synthesis.source=hybridqa", f"synthesis.hybridqa_tables={TABLES}",
            f"synthesis.hybridqa_passages={PASSAGES}", f"synthesis.out_dir={tmp_path / 'synth'}",
            "synthesis.max_tokens=4", "tracking.enabled=false", "model=tiny_random")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    # The tiny model's random words are no plan: every candidate is dropped, each with its reason.
    drops = lines(tmp_path / "synth" / "drops.jsonl")
    assert len(drops) == 4 and {d["code"] for d in drops} == {"bad_plan", "small_source"}
    assert "## Drop reasons" in (tmp_path / "synth" / "card.md").read_text()
    again = run_cli(*args)
    assert again.returncode == 0 and "resuming: 4 candidate tasks already decided" in again.stdout
    assert len(lines(tmp_path / "synth" / "drops.jsonl")) == 4


# ---- the agent baseline ---------------------------------------------------------------------------


def test_agent_baseline_drops_what_the_agent_already_solves(tmp_path):
    """baseline=agent: each surviving task goes to the agent as a gold TaskRecord, and its answer is scored."""
    asked = []

    def agent(tasks):
        asked.extend(tasks)
        # the agent solves the lighthouses (it returns the gold table) and answers nothing else
        return [f"```markdown\n{t.answer_markdown}\n```" if "lighthouse" in t.query.lower() else "no idea"
                for t in tasks]

    tables = list(read_hybridqa(TABLES, PASSAGES))
    double = TableDouble(tables, MODES)
    s = settings(baseline="agent", agreement_threshold=0.85)
    generator = CachedGenerator(double, tmp_path / CACHE_FILE, s.max_concurrency)
    Synthesizer(s, generator, ExactJudge(), tmp_path, "hybridqa", baseline_agent=agent).run(tables)

    assert double.calls["baseline"] == 0  # no closed-book call
    assert len(asked) == 3 and all(task.gold_rows for task in asked)  # lighthouses, towns, comets got there
    drops = drops_by_table(tmp_path)
    lighthouses = drops["Lighthouses_of_the_Inner_Coast_0"]
    assert (lighthouses["stage"], lighthouses["code"], lighthouses["baseline_item_f1"]) == ("difficulty", "too_easy", 1.0)
    assert "agent baseline" in lighthouses["reason"]
    kept = {r["synthesis"]["table_id"] for r in lines(tmp_path / "train.jsonl")}
    assert kept == {"Towns_of_Ardent_Vale_0", "Periodic_comets_of_the_Kell_survey_0"}  # the agent did not know them


def test_agent_baseline_needs_an_agent_and_a_known_name(tmp_path):
    generator = CachedGenerator(TableDouble([], {}), tmp_path / CACHE_FILE, 2)
    with pytest.raises(WideseekError, match="baseline=agent"):
        Synthesizer(settings(baseline="agent"), generator, ExactJudge(), tmp_path / "a", "hybridqa")
    with pytest.raises(WideseekError, match="synthesis.baseline"):
        Synthesizer(settings(baseline="oracle"), generator, ExactJudge(), tmp_path / "b", "hybridqa")


def test_agent_baseline_rolls_out_the_configured_agent_with_search(tmp_path):
    """The runner's AgentBaseline: a real rollout (lead, tools, local search) on the generator's engine."""
    from hydra import compose, initialize_config_dir
    from scripted_engine import TABLE_ANSWER, ScriptedEngine, make_task, tiny_tokenizer, world_config

    from wideseek_exp.jobs.data import AgentBaseline, EngineTextGenerator

    def script(view):
        assert view.role == "single"  # agent=singleseek, as configured
        if view.turn == 1:
            return '<tool_call>\n{"name": "search", "arguments": {"query": "Aldova airports"}}\n</tool_call>'
        assert "URL: " in view.text.rsplit("<tool_response>", 1)[1]  # the search ran and its hits came back
        return TABLE_ANSWER

    world_config()  # the world, built
    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tracking.enabled=false", "agent=singleseek",
                                                        "agent.tool_grammar=off"])  # a scripted engine: no masks
    generator = EngineTextGenerator(cfg)
    generator.engine = ScriptedEngine(tiny_tokenizer(), script)
    answers = AgentBaseline(cfg, generator)([make_task("t1", "List the airports of Aldova."),
                                             make_task("t2", "List the airports of Borvia.")])
    assert all("| Aldova Airport | ALD |" in answer for answer in answers)
    assert len(generator.engine.batches) == 2  # a search turn, then the answer: the rollout ran


def test_a_prompt_over_the_models_context_drops_its_candidate_and_the_others_go_on(tmp_path):
    """The engine-backed generator refuses a prompt its model cannot take (no engine call for it): that
    candidate is dropped at its stage with the reason, the rest are answered."""
    from scripted_engine import ScriptedEngine, tiny_tokenizer, world_config

    from wideseek_exp.jobs.data import EngineTextGenerator
    from wideseek_exp.tasks.textgen import TextRequest

    cfg = OmegaConf.merge(world_config(), {"synthesis": {"thinking": False}})
    engine = ScriptedEngine(tiny_tokenizer(), lambda view: "```json\n{}\n```")
    engine.context_limit = 60
    generator = EngineTextGenerator(cfg)
    generator.engine = engine
    short, long = TextRequest("query", "Plan a task.", 0.7, 32, 0), TextRequest("query", "word " * 200, 0.7, 32, 0)
    replies = generator.generate([long, short])
    assert replies[0].refused.startswith("the prompt is ") and "over the model's context of 60" in replies[0].refused
    assert replies[0].text == "" and replies[1].refused is None and replies[1].text == "```json\n{}\n```"
    assert [len(batch) for batch in engine.batches] == [1]  # only the short prompt reached the engine

    class Refusing(TableDouble):
        def generate(self, requests):
            return [TextReply("", 999, 0, "the prompt is 999 tokens, over the model's context of 100")
                    if request.stage == "query" and "Lighthouse" in request.prompt else self.one(request)
                    for request in requests]

    tables = list(read_hybridqa(TABLES, PASSAGES))
    run(tmp_path, double=Refusing(tables, MODES))
    drops = drops_by_table(tmp_path)
    assert drops["Lighthouses_of_the_Inner_Coast_0"]["code"] == "prompt_too_long"
    # the other candidates end as in a run without the refusal (test_card_counts_histograms_tokens_and_cost)
    assert sorted(d["code"] for d in drops.values()) == ["low_agreement", "prompt_too_long", "small_source", "too_easy"]
