"""What a policy under RL may emit cannot crash a rollout: each hostile reply below, written by the lead or a
subagent of one task, ends that trial with its flag or counter and a score of 0 with a reason, while the
other task's trial in the same batches finishes exactly as it does alone."""

from __future__ import annotations

import pytest
from scripted_engine import (
    TABLE_ANSWER,
    FakeSearch,
    ScriptedEngine,
    agent_config,
    make_task,
    tiny_tokenizer,
    tool_call,
    urls_in,
    view,
)

from wideseek_exp.agents import run_rollouts
from wideseek_exp.agents.parser import MAX_ARGUMENT_CHARS
from wideseek_exp.engines.base import Completion
from wideseek_exp.scoring import ExactJudge, score_task_trials
from wideseek_exp.tasks.record import TaskRecord

CALM = make_task("calm")
HOSTILE = make_task("hostile", "A hostile task: list the airports of Aldova with their IATA codes.")
GOLD = dict(unique_columns=["airport"], required=["airport", "iatacode"], gold_columns=["Airport", "IATA code"],
            gold_rows=[["Aldova Airport", "ALD"]],
            eval_pipeline={"airport": {"preprocess": ["norm_str"], "metric": ["exact_match"]},
                           "iatacode": {"preprocess": ["norm_str"], "metric": ["exact_match"]}})
BUDGET = 4096  # max_reply_tokens: large enough for the long replies to arrive whole, but for "budget"
TABLE_ROWS = 100_000


def calm(view):
    if view.role == "lead":
        return tool_call("create_sub_agents", {"sub_agents": [{"prompt": "find it"}]}) if view.turn == 1 else TABLE_ANSWER
    if view.turn == 1:
        return tool_call("search", {"queries": [{"query": "aldova airport"}]})
    if view.turn == 2:
        return tool_call("access", {"urls": [{"url": urls_in(view.last_tool_result)[0], "info_to_extract": "IATA"}]})
    return "Report: IATA code ALD."


def big_table() -> str:
    rows = "".join(f"| Airport {k} | X{k} |\n" for k in range(TABLE_ROWS))
    return "```markdown\n| Airport | IATA code |\n| --- | --- |\n" + rows + "```"


# case -> (role that misbehaves, its reply on every turn)
CASES = {
    "budget": ("lead", "<think>\n" + "and so on " * 3 * BUDGET),  # no closing tag before the budget
    "deep_json": ("lead", '<tool_call>\n{"name": "create_sub_agents", "arguments": {"sub_agents": '
                  + "[" * 10_000 + "]" * 10_000 + "}}\n</tool_call>"),
    "many_subagents": ("lead", tool_call("create_sub_agents", {"sub_agents": [{"prompt": f"part {k}"}
                                                                              for k in range(10_000)]})),
    "megabyte_argument": ("subagent", tool_call("search", {"queries": [{"query": "x" * 1_000_000}]})),
    "invalid_utf8": ("lead", None),  # token ids, below
    "call_in_thinking": ("lead", "<think>\n" + tool_call("create_sub_agents", {"sub_agents": [{"prompt": "a"}]}, None)
                         + "\n</think>\n\nNo table, sorry."),
    "huge_table": ("lead", None),  # built once, below
}


class HostileEngine(ScriptedEngine):
    """The calm script for the calm task; for the hostile one, the case's reply from its role. Replies may
    run past the batch's max_new_tokens, as a remote server's might: the episode cuts them."""

    def __init__(self, tokenizer, case: str):
        self.case = case
        self.role, self.reply = CASES[case]
        if case == "huge_table":
            self.reply = big_table()
        super().__init__(tokenizer, calm)

    def generate(self, prompts, sampling):
        completions = super().generate(prompts, sampling)
        for index, prompt in enumerate(prompts):
            seen = view(self.tokenizer.decode(prompt, skip_special_tokens=False))
            if "hostile" not in seen.user or seen.role != self.role:
                continue
            if self.case == "invalid_utf8":  # lone bytes of multi-byte characters: no valid UTF-8 between them
                ids = [161, 227, 108] * 50 + self.tokenizer.encode("<tool_call>", add_special_tokens=False) + [161] * 20
            else:
                ids = self.tokenizer.encode(self.reply, add_special_tokens=False)
            completions[index] = Completion(ids + [self.end_id], [-1.0] * (len(ids) + 1), "stop", "")
        return completions


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def run(tokenizer, tasks, case=None):
    agent, search_cfg = agent_config(max_subagents_per_call=3, max_reply_tokens=BUDGET if case == "budget" else 2_000_000,
                                     max_context_tokens=4_000_000)
    engine = HostileEngine(tokenizer, case) if case else ScriptedEngine(tokenizer, calm)
    return run_rollouts(tasks, 1, engine, FakeSearch(), tokenizer, agent, search_cfg, seed=3)


def gold(task) -> TaskRecord:
    return TaskRecord(instance_id=task.instance_id, query=task.query, language="en", **GOLD)


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_reply_ends_its_trial_with_a_reason_and_leaves_the_others_alone(tokenizer, case):
    (alone,) = run(tokenizer, [CALM])
    calm_run, hostile_run = run(tokenizer, [CALM, HOSTILE], case)

    # the calm trial is the one it is alone: the same agents, tokens and answer
    assert [a.token_ids() for a in calm_run.agents] == [a.token_ids() for a in alone.agents]
    assert calm_run.final_answer == alone.final_answer
    (calm_score,) = score_task_trials([calm_run.final_answer], gold(CALM), ExactJudge())
    assert calm_score.item_f1 == 1.0

    lead = hostile_run.root
    flags = [turn.parse_flags for agent in hostile_run.agents for turn in agent.turns]
    (score,) = score_task_trials([hostile_run.final_answer], gold(HOSTILE), ExactJudge())
    if CASES[case][0] == "lead":
        assert score.item_f1 == 0.0 and score.reason
    if case == "budget":
        assert lead.reply_limit and lead.turns[0].finish_reason == "length" and len(lead.turns[0].response_ids) == BUDGET
        assert score.reason == "no response"  # all of it was unfinished thinking: no answer at all
    elif case == "deep_json":
        assert flags[0] == {"malformed_json": 1} and score.reason == "no table"
    elif case == "many_subagents":  # the first W entries run; the call repeated every turn is a loop
        limit = agent_config()[0].repeat_call_limit  # that many calls in a row: the last one is not run
        assert flags[0] == {"dropped_items": 10_000 - 3} and hostile_run.subagent_count == 3 * (limit - 1)
        assert lead.failure == "degenerate_repetition" and score.reason == "no response"
    elif case == "megabyte_argument":  # cut to MAX_ARGUMENT_CHARS, and the repeated search is a loop; the
        subagent = hostile_run.agents[1]  # lead reads a failure notice and answers (its script: the table)
        assert subagent.turns[0].parse_flags == {"cut_arguments": 1}
        assert len(subagent.turns[0].tool_arguments["queries"][0]["query"]) == MAX_ARGUMENT_CHARS
        assert subagent.failure == "degenerate_repetition" and subagent.final_text is None
    elif case == "invalid_utf8":
        assert "\ufffd" in hostile_run.final_answer and flags[0] == {"unclosed_tool_call": 1}
    elif case == "call_in_thinking":  # a call written while thinking is no call
        assert hostile_run.subagent_count == 0 and hostile_run.final_answer == "No table, sorry."
    elif case == "huge_table":  # read whole, and no gold row among them
        assert score.response_rows == TABLE_ROWS and score.reason.startswith("empty join")
