"""rl/rows.py on scripted rollouts: one row per agent with all its turns packed, tool and subagent-result
tokens never trained, sampling logprobs aligned, turn selection applied; TRL's padded layout, padding
rows, and the common row count of the ranks. The reference's turn selection, against cases worked out by
hand."""

import pytest
import torch
from scripted_engine import TABLE_ANSWER, FakeSearch, ScriptedEngine, agent_config, make_task, tiny_tokenizer, tool_call

from wideseek_exp.agents import run_rollouts
from wideseek_exp.rl.rows import (
    PADDING,
    AgentOutcome,
    collate,
    padded_row_count,
    padding_row,
    select_turns,
    trajectory_rows,
    trim_padding_columns,
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def script(view):
    """Lead: two subagents, then a table. First subagent: a search, then a report. Second: searches until
    it runs out of turns (a failed subagent)."""
    if view.role == "lead":
        if view.turn == 1:
            return tool_call("create_sub_agents", {"sub_agents": [{"prompt": "part 0"}, {"prompt": "part 1"}]})
        return TABLE_ANSWER
    if view.subtask == "part 0" and view.turn == 2:
        return "Report on part 0: ALD."
    return tool_call("search", {"queries": [{"query": f"{view.subtask} turn {view.turn}"}]})


@pytest.fixture(scope="module")
def trajectory(tokenizer):
    agent, search = agent_config(max_subagents_per_call=2, subagent_max_turns=3)
    (result,) = run_rollouts([make_task()], 1, ScriptedEngine(tokenizer, script), FakeSearch(), tokenizer, agent,
                             search, seed=3)
    lead, done, failed = result.agents
    assert len(lead.turns) == 2 and len(done.turns) == 2 and failed.turn_limit and len(failed.turns) == 3
    return result


def test_one_row_per_agent_holding_its_whole_context(trajectory):
    rows = trajectory_rows(trajectory, index=5, succeeded=True)
    assert [row.role for row in rows] == ["lead", "subagent", "subagent"]
    for row, agent in zip(rows, trajectory.agents):
        assert row.trajectory == 5
        assert row.prompt_ids == agent.prompt_ids
        assert row.prompt_ids + row.completion_ids == agent.token_ids()
        assert len(row.trained_mask) == len(row.sampling_logprobs) == len(row.completion_ids)
        # sampling logprobs ride on exactly the reply tokens
        assert [0.0] * len(agent.prompt_ids) + row.sampling_logprobs == agent.token_logprobs()


def test_only_reply_tokens_of_selected_turns_are_trained(trajectory):
    lead_row, done_row, failed_row = trajectory_rows(trajectory, index=0, succeeded=True)
    lead, done, _ = trajectory.agents
    # every reply token of the lead and the subagent that reported; nothing of the follow-ups
    assert lead_row.trained_mask == lead.response_mask()[len(lead.prompt_ids):]
    assert done_row.trained_mask == done.response_mask()[len(done.prompt_ids):]
    assert lead_row.trained_tokens == lead.generated_tokens
    followup = lead.turns[0].followup_ids  # the subagents' reports, as the lead read them
    start = len(lead.turns[0].response_ids)
    assert len(followup) > 20 and lead_row.trained_mask[start:start + len(followup)] == [0] * len(followup)
    # the subagent that ran out of turns is left out of a successful trajectory
    assert failed_row.trained_tokens == 0


def test_a_failed_trajectory_trains_the_failing_turns_and_the_final_answer(trajectory):
    lead_row, done_row, failed_row = trajectory_rows(trajectory, index=0, succeeded=False)
    lead, _, failed = trajectory.agents
    assert lead_row.trained_tokens == len(lead.turns[-1].response_ids)  # the answer without a valid table
    assert done_row.trained_tokens == 0
    assert failed_row.trained_tokens == failed.generated_tokens  # every turn of the agent that ran out


def test_turn_selection_off_trains_every_reply(trajectory):
    rows = trajectory_rows(trajectory, index=0, succeeded=False, turn_selection=False)
    assert [row.trained_tokens for row in rows] == [agent.generated_tokens for agent in trajectory.agents]


def test_collate_lays_rows_out_as_trl_does(trajectory, tokenizer):
    rows = trajectory_rows(trajectory, index=2, succeeded=True) + [padding_row(tokenizer.pad_token_id)]
    for k, row in enumerate(rows):
        row.advantage, row.weight = 0.5 * k, 0.01 * k
    batch = collate(rows, tokenizer.pad_token_id)
    prompt_width = max(len(row.prompt_ids) for row in rows)
    completion_width = max(len(row.completion_ids) for row in rows)
    assert batch["prompt_ids"].shape == (4, prompt_width) and batch["completion_ids"].shape == (4, completion_width)
    for r, row in enumerate(rows):
        prompt, completion = len(row.prompt_ids), len(row.completion_ids)
        assert batch["prompt_ids"][r, prompt_width - prompt:].tolist() == row.prompt_ids  # left-padded
        assert batch["prompt_mask"][r].sum() == prompt
        assert batch["completion_ids"][r, :completion].tolist() == row.completion_ids  # right-padded
        assert batch["completion_mask"][r].sum() == completion
        assert batch["trained_mask"][r].sum() == row.trained_tokens
    assert batch["advantages"].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert batch["loss_weights"].tolist() == pytest.approx([0.0, 0.01, 0.02, 0.03])
    assert batch["row_trajectory"].tolist() == [2, 2, 2, PADDING]
    # the padding row: one attended token, nothing to attend after it, nothing trained
    assert batch["prompt_mask"][3].sum() == 1 and batch["completion_mask"][3].sum() == 0


def test_trimming_drops_only_columns_that_are_padding_in_every_row(trajectory, tokenizer):
    lead_row, done_row, _ = trajectory_rows(trajectory, index=0, succeeded=True)
    full = collate([lead_row, done_row, padding_row(tokenizer.pad_token_id)], tokenizer.pad_token_id)
    part = trim_padding_columns({key: value[1:] for key, value in full.items()})  # the subagent and the padding
    assert part["prompt_ids"].shape[1] == len(done_row.prompt_ids)
    assert part["completion_ids"].shape[1] == len(done_row.completion_ids)
    assert part["completion_ids"][0].tolist() == done_row.completion_ids
    assert part["trained_mask"].sum() == done_row.trained_tokens
    only_padding = trim_padding_columns({key: value[2:] for key, value in full.items()})
    assert only_padding["prompt_ids"].shape[1] == 1 and only_padding["completion_ids"].shape[1] == 1


@pytest.mark.parametrize("counts,multiple,expected", [
    ([5, 11], 4, 12),  # ranks with different row counts share one count, a multiple of steps_per_generation
    ([8, 8], 4, 8),
    ([0, 3], 4, 4),
    ([0, 0], 4, 4),  # nothing to train anywhere: still one row per micro-batch
    ([13], 1, 13),
])
def test_every_rank_pads_to_the_largest_count_rounded_up(counts, multiple, expected):
    assert padded_row_count(counts, multiple) == expected


def test_padded_rows_split_evenly_so_no_row_is_dropped(tokenizer):
    # TRL's split_tensor_dict cuts len // steps rows per micro-batch and drops the remainder
    steps = 4
    rows = [padding_row(tokenizer.pad_token_id) for _ in range(padded_row_count([5, 11], steps))]
    batch = collate(rows, tokenizer.pad_token_id)
    assert len(batch["prompt_ids"]) % steps == 0
    assert torch.equal(batch["loss_weights"], torch.zeros(len(rows), dtype=torch.float64))


# -------------------------------------------------------------------------------------- turn selection

OK = None


def test_a_successful_trajectory_trains_every_agent_but_the_failed_subagents():
    agents = [AgentOutcome(3, OK), AgentOutcome(2, OK), AgentOutcome(3, "turn_limit"),
              AgentOutcome(2, "degenerate_repetition")]
    assert select_turns(agents, succeeded=True) == [[True] * 3, [True] * 2, [False] * 3, [False] * 2]


def test_a_failed_trajectory_trains_the_final_answer_and_the_agents_that_ran_out():
    agents = [AgentOutcome(3, OK), AgentOutcome(2, "context_overflow"), AgentOutcome(4, OK)]
    assert select_turns(agents, succeeded=False) == [[False, False, True], [True, True], [False] * 4]


def test_a_repetition_failure_takes_precedence_and_only_its_last_turn_is_trained():
    agents = [AgentOutcome(3, OK), AgentOutcome(3, "degenerate_repetition"), AgentOutcome(2, "turn_limit")]
    assert select_turns(agents, succeeded=False) == [[False, False, True], [False, False, True], [False, False]]


def test_a_lead_that_failed_trains_its_own_turns():
    agents = [AgentOutcome(10, "turn_limit"), AgentOutcome(2, OK)]
    assert select_turns(agents, succeeded=False) == [[True] * 10, [False] * 2]
    # a lead whose prompt never fit has no turns at all
    assert select_turns([AgentOutcome(0, "context_overflow")], succeeded=False) == [[]]


def test_a_single_agent_answer_without_a_table_trains_that_answer():
    assert select_turns([AgentOutcome(4, OK)], succeeded=False) == [[False, False, False, True]]
