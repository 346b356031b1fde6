"""Broad tasks from tables (task=data): the WideSeek-R1 three-stage pipeline.

For every source table (tasks/sources.py), `tasks_per_table` times:
  1. query     sample a target size (target_rows_min..target_rows_max rows, at most the table's) and
               ask the generator for a user intent, the answer's columns, its key (unique) columns
               and a refined query that asks for about that many rows. We append the output format
               (one markdown table with exactly those columns), so every query names its columns.
  2. answer    two independent answers from the generator, each a markdown table built from the
               table and its linked passages, plus the columns that identify a row.
  3. filter    answer 1 becomes the gold table when: it has the query's columns, both answers name
               the same key columns, it has at least min_rows rows, answer 2 scored against it with
               OUR WideSearch scorer (scoring/, the configured judge) reaches item F1 >=
               agreement_threshold, and (unless baseline=none) a baseline's answer to the query scores
               below baseline_max_item_f1: baseline=closed_book asks the generator without any material
               (a task it answers from memory is too easy), baseline=agent rolls out the configured agent
               with search (a task it already solves teaches the policy little).

Every task ends in exactly one place, written as it is decided (append, flush, fsync):
  train.jsonl / test.jsonl   kept tasks in the WideSeek-R1 layout (question, answer, is_markdown,
                             unique_columns, evaluation.required, instance_id, language) + `synthesis`
  drops.jsonl                dropped tasks: instance_id, stage, code, reason (+ agreement, rows)
A rerun on the same folder skips every task already in one of them; the generator's cache
(textgen.CachedGenerator) makes the calls of an interrupted chunk free the second time.
`finalize` writes the data card and the `datasets` copy from those files.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wideseek_exp import WideseekError
from wideseek_exp.scoring.judges import Judge, MalformedAnswer, last_json_block
from wideseek_exp.scoring.widesearch import score_response
from wideseek_exp.tasks.loaders import default_column_pipeline
from wideseek_exp.tasks.record import TaskRecord, normalize_column, parse_markdown_table, to_markdown_table
from wideseek_exp.tasks.sources import SourceTable
from wideseek_exp.tasks.textgen import CACHE_FILE, StageUsage, TextGenerator, TextReply, TextRequest
from wideseek_exp.trialstore import append_lines, read_complete_lines

DROPS_FILE = "drops.jsonl"
SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}
SETTINGS_FILE = "synthesis_settings.json"
STAGES = ("query", "answer", "size", "agreement", "difficulty")  # where a task can be dropped, in order
INF = float("inf")
AGREEMENT_BINS = (("<0.5", 0.0, 0.5), ("0.5-0.7", 0.5, 0.7), ("0.7-0.8", 0.7, 0.8), ("0.8-0.9", 0.8, 0.9),
                  ("0.9-1", 0.9, 1.0), ("1", 1.0, INF))
ROW_BINS = (("<3", 0, 3), ("3-5", 3, 6), ("6-10", 6, 11), ("11-20", 11, 21), ("21-30", 21, 31), ("31-50", 31, 51),
            ("51+", 51, INF))

# ---- prompts (ours) -----------------------------------------------------------------------------

QUERY_PROMPT = """You design research tasks for a web-search assistant. Each task asks for a table \
of many entities that the assistant must assemble by searching, one entity at a time.

Below is a table from a web page, with its context and, where cells link to other pages, short \
passages from those pages.

{material}

Design one task answerable from this material:
1. Infer a plausible user intent: why would someone want a table like this?
2. Choose the columns of the answer table (2 to 6): one or more columns that identify a row, plus \
attributes found in the table or in the passages. Column names must be short and descriptive.
3. Write a refined, self-contained request for about {target_rows} rows. If the table has more \
rows than that, narrow the request with a condition on some column so that about {target_rows} \
rows qualify. Do not mention "the table" or "the passages": the user has never seen them.

End your reply with one fenced json block:
```json
{{"intent": "...", "columns": ["..."], "unique_columns": ["..."], "query": "..."}}
```"""

QUERY_FORMAT = (
    "\n\nPresent the result as one markdown table with exactly these columns, in this order:\n{header}\n"
    "One row per entity; do not leave out any row or cell. Output the table in this format:\n"
    "```markdown\n{{data_content}}\n```"
)

ANSWER_PROMPT = """Answer the request below using only the reference material that follows it.

Request:
{query}

Reference material:
{material}

Write the complete answer table in one ```markdown fenced block, with exactly the requested \
columns. After the block, write one line "Unique columns: <names>" listing the column or columns \
whose values together identify a row."""

BASELINES = ("closed_book", "agent", "none")

BASELINE_PROMPT = """{query}

Answer from your own knowledge, without searching."""

UNIQUE_LINE = re.compile(r"unique columns?\s*[:：]\s*(.+)", re.IGNORECASE)
FENCED_MARKDOWN = re.compile(r"```markdown(.*?)```", re.DOTALL)


def render_material(table: SourceTable, max_rows: int, max_passage_chars: int) -> str:
    """Title, context, the table as markdown (first max_rows rows) and the passages its cells link to."""
    rows = table.rows[:max_rows]
    parts = [f"Title: {table.title}"]
    if table.context:
        parts.append(f"Context: {table.context}")
    parts.append(to_markdown_table(table.header, rows))
    if len(table.rows) > len(rows):
        parts.append(f"({len(table.rows) - len(rows)} more rows not shown)")
    passages = [(link, text) for index in range(len(rows)) for link, text in table.row_passages(index)]
    if passages and max_passage_chars > 0:
        parts.append("Linked passages:")
        for link, text in passages:
            text = " ".join(text.split())
            parts.append(f"- {link}: {text[:max_passage_chars]}" + ("..." if len(text) > max_passage_chars else ""))
    return "\n\n".join(parts)


# ---- what flows between the stages --------------------------------------------------------------


@dataclass
class Plan:
    intent: str
    columns: list[str]
    unique_columns: list[str]
    query: str  # the refined query with our format instruction appended


@dataclass
class Answer:
    columns: list[str]
    rows: list[list[str]]
    unique_columns: list[str]  # normalised


@dataclass
class Candidate:
    table: SourceTable
    instance_id: str
    target_rows: int
    material: str = ""
    plan: Plan | None = None
    answers: list[Answer] = field(default_factory=list)
    agreement: float | None = None
    baseline_item_f1: float | None = None
    drop: dict | None = None  # {"stage", "code", "reason"} once dropped

    def dropped(self, stage: str, code: str, reason: str) -> None:
        self.drop = {"stage": stage, "code": code, "reason": reason}


class Rejected(ValueError):
    """A generator reply that cannot be used; the message is the drop reason."""


def parse_plan(text: str) -> Plan:
    try:
        raw = last_json_block(text)
    except MalformedAnswer as exc:
        raise Rejected(str(exc)) from None
    if not isinstance(raw, dict):
        raise Rejected("the plan is not a JSON object")
    columns, keys, query = raw.get("columns"), raw.get("unique_columns"), raw.get("query")
    if not isinstance(query, str) or not query.strip():
        raise Rejected("the plan has no query")
    if not isinstance(columns, list) or not all(isinstance(c, str) and c.strip() for c in columns):
        raise Rejected("the plan's columns are not a list of names")
    columns = [" ".join(c.split()).replace("|", "/") for c in columns]
    names = [normalize_column(c) for c in columns]
    if len(columns) < 2 or len(set(names)) < len(names):
        raise Rejected("the plan needs at least two distinct columns")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise Rejected("the plan names no unique columns")
    if any(normalize_column(k) not in names for k in keys):
        raise Rejected("a unique column of the plan is not among its columns")
    header = "| " + " | ".join(columns) + " |"
    return Plan(str(raw.get("intent") or ""), columns, [normalize_column(k) for k in keys],
                query.strip() + QUERY_FORMAT.format(header=header))


def parse_answer(text: str) -> Answer:
    blocks = FENCED_MARKDOWN.findall(text or "")
    try:
        columns, rows = parse_markdown_table(blocks[0] if blocks else (text or ""))
    except ValueError as exc:
        raise Rejected(f"no readable markdown table ({exc})") from None
    found = UNIQUE_LINE.findall(FENCED_MARKDOWN.sub("", text))
    if not found:
        raise Rejected("no 'Unique columns:' line")
    keys = [normalize_column(name.strip(" `*.")) for name in found[-1].split(",") if name.strip(" `*.")]
    if not keys:
        raise Rejected("an empty 'Unique columns:' line")
    return Answer(columns, rows, keys)


def gold_task(candidate: Candidate) -> TaskRecord:
    """Answer 1 as a WideSearch task: keys compared exactly, the other columns by the judge."""
    answer = candidate.answers[0]
    required = [normalize_column(c) for c in answer.columns]
    pipeline = {c: ({"preprocess": ["norm_str"], "metric": ["exact_match"]} if c in answer.unique_columns
                    else default_column_pipeline()) for c in required}
    return TaskRecord(candidate.instance_id, candidate.plan.query, "en", list(answer.unique_columns), required,
                      pipeline, list(answer.columns), dedup_rows(answer))


def dedup_rows(answer: Answer) -> list[list[str]]:
    """Rows with a key seen before dropped (the scorer does the same), the first kept."""
    names = [normalize_column(c) for c in answer.columns]
    where = [names.index(k) for k in answer.unique_columns]
    seen, rows = set(), []
    for row in answer.rows:
        key = tuple(row[i].strip().casefold() for i in where)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


# ---- the pipeline -------------------------------------------------------------------------------


class Synthesizer:
    def __init__(self, settings, generator: TextGenerator, judge: Judge, out_dir: Path, source: str,
                 baseline_agent: Callable[[list[TaskRecord]], list[str]] | None = None):
        """`baseline_agent` answers tasks with an agent (one final response per task): baseline=agent."""
        if settings.baseline not in BASELINES:
            raise WideseekError(f"config key 'synthesis.baseline' must be one of {BASELINES} (got {settings.baseline!r})")
        if settings.baseline == "agent" and baseline_agent is None:
            raise WideseekError("synthesis.baseline=agent needs an agent to run (the task=data runner provides it)")
        self.baseline_agent = baseline_agent
        self.s = settings
        self.generator = generator
        self.judge = judge
        self.out = Path(out_dir)
        self.source = source
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self.done = {record["instance_id"] for name in (DROPS_FILE, *SPLIT_FILES.values())
                     for record in read_complete_lines(self.out / name)}

    def _check_settings(self) -> None:
        """A folder holds the tasks of one set of settings: resuming with other ones is refused."""
        keys = ("tasks_per_table", "target_rows_min", "target_rows_max", "min_rows", "agreement_threshold",
                "baseline", "baseline_max_item_f1", "answer_temperature", "seed", "test_fraction")
        settings = {"source": self.source, "model": self.generator.model, "judge": self.judge.name,
                    **{key: getattr(self.s, key) for key in keys}}
        settings = json.loads(json.dumps(settings, default=str))
        path = self.out / SETTINGS_FILE
        if path.is_file():
            earlier = json.loads(path.read_text())
            changed = sorted(k for k in set(earlier) | set(settings) if earlier.get(k) != settings.get(k))
            if changed:
                raise WideseekError(f"{self.out} holds tasks made with other settings ({changed[0]}: "
                                    f"{earlier.get(changed[0])!r} there, {settings.get(changed[0])!r} now); "
                                    "use another synthesis.out_dir")
        else:
            path.write_text(json.dumps(settings, indent=2, sort_keys=True))

    def candidates(self, tables: Iterable[SourceTable]) -> Iterator[Candidate]:
        made = 0
        for table in tables:
            for variant in range(self.s.tasks_per_table):
                if self.s.limit is not None and made >= self.s.limit:
                    return
                made += 1
                instance_id = f"synth-{self.source}-{table.table_id}-{variant}"
                if instance_id in self.done:
                    continue
                rng = random.Random(f"{self.s.seed}:{instance_id}")
                n = len(table.rows)
                target = rng.randint(min(self.s.target_rows_min, n), min(self.s.target_rows_max, n)) if n else 0
                yield Candidate(table, instance_id, target)

    def run(self, tables: Iterable[SourceTable], on_chunk=None) -> None:
        chunk: list[Candidate] = []
        for candidate in self.candidates(tables):
            chunk.append(candidate)
            if len(chunk) == self.s.max_concurrency:
                self.process(chunk)
                chunk = []
                if on_chunk:
                    on_chunk()
        if chunk:
            self.process(chunk)
            if on_chunk:
                on_chunk()

    def process(self, chunk: list[Candidate]) -> None:
        """The three stages for a chunk of candidates, each stage one batch of generator calls."""
        self.stage_query(chunk)
        self.stage_answer([c for c in chunk if c.drop is None])
        for candidate in chunk:
            if candidate.drop is None:
                self.check(candidate)
        if self.s.baseline != "none":
            self.stage_difficulty([c for c in chunk if c.drop is None])
        for candidate in chunk:
            self.write(candidate)

    def ask(self, stage: str, prompts: list[str], temperature: float, max_tokens: int, seed: int) -> list[TextReply]:
        return self.generator.generate([TextRequest(stage, p, temperature, max_tokens, seed) for p in prompts])

    def stage_query(self, chunk: list[Candidate]) -> None:
        live = []
        for c in chunk:
            if len(c.table.rows) < self.s.min_rows:
                c.dropped("query", "small_source", f"the source table has {len(c.table.rows)} rows, "
                                                   f"fewer than min_rows={self.s.min_rows}")
                continue
            c.material = render_material(c.table, self.s.max_source_rows, self.s.max_passage_chars)
            live.append(c)
        prompts = [QUERY_PROMPT.format(material=c.material, target_rows=c.target_rows) for c in live]
        for c, reply in zip(live, self.ask("query", prompts, self.s.query_temperature, self.s.max_tokens, self.s.seed)):
            if reply.refused:
                c.dropped("query", "prompt_too_long", reply.refused)
                continue
            try:
                c.plan = parse_plan(reply.text)
            except Rejected as exc:
                c.dropped("query", "bad_plan", str(exc))

    def stage_answer(self, live: list[Candidate]) -> None:
        prompts = [ANSWER_PROMPT.format(query=c.plan.query, material=c.material) for c in live]
        replies = [self.ask("answer", prompts, self.s.answer_temperature, self.s.max_tokens, self.s.seed * 100 + k)
                   for k in range(2)]  # two independent answers: the seed tells them apart
        for i, c in enumerate(live):
            for k in range(2):
                if replies[k][i].refused:
                    c.dropped("answer", "prompt_too_long", f"answer {k + 1}: {replies[k][i].refused}")
                    break
                try:
                    c.answers.append(parse_answer(replies[k][i].text))
                except Rejected as exc:
                    c.dropped("answer", "no_table", f"answer {k + 1}: {exc}")
                    break

    def check(self, c: Candidate) -> None:
        """Stage 3 without the baseline: columns, keys, size and agreement."""
        first, second = c.answers
        asked = {normalize_column(col) for col in c.plan.columns}
        names = [normalize_column(col) for col in first.columns]
        if set(names) != asked or len(set(names)) < len(names):
            c.dropped("answer", "wrong_columns", f"answer 1 has columns {first.columns}, the query asks for "
                                                 f"{c.plan.columns}")
            return
        if set(first.unique_columns) != set(second.unique_columns) or not set(first.unique_columns) <= asked:
            c.dropped("answer", "key_disagreement", f"unique columns {first.unique_columns} (answer 1) and "
                                                    f"{second.unique_columns} (answer 2) differ or are not asked for")
            return
        rows = len(dedup_rows(first))
        if rows < self.s.min_rows:
            c.dropped("size", "too_few_rows", f"{rows} rows, fewer than min_rows={self.s.min_rows}")
            return
        response = "```markdown\n" + to_markdown_table(second.columns, second.rows) + "\n```"
        score = score_response(response, gold_task(c), self.judge)
        if score.judge_error:
            c.dropped("agreement", "judge_error", score.reason)
            return
        c.agreement = score.item_f1
        if c.agreement < self.s.agreement_threshold:
            c.dropped("agreement", "low_agreement", f"item F1 of answer 2 against answer 1 is {c.agreement:.3f}, "
                                                    f"under {self.s.agreement_threshold}"
                                                    + (f" ({score.reason})" if score.reason else ""))

    def stage_difficulty(self, live: list[Candidate]) -> None:
        if not live:
            return
        if self.s.baseline == "agent":
            responses = self.baseline_agent([gold_task(c) for c in live])
        else:
            prompts = [BASELINE_PROMPT.format(query=c.plan.query) for c in live]
            responses = [reply.text for reply in self.ask("baseline", prompts, 0.0, self.s.max_tokens, self.s.seed)]
        for c, response in zip(live, responses):
            score = score_response(response, gold_task(c), self.judge)
            if score.judge_error:
                c.dropped("difficulty", "judge_error", score.reason)
                continue
            c.baseline_item_f1 = score.item_f1
            if score.item_f1 >= self.s.baseline_max_item_f1:
                c.dropped("difficulty", "too_easy", f"the {self.s.baseline} baseline reaches item F1 {score.item_f1:.3f}, "
                                                    f"at least baseline_max_item_f1={self.s.baseline_max_item_f1}")

    # -- outputs

    def split_of(self, instance_id: str) -> str:
        bucket = int(hashlib.sha256(f"{self.s.seed}:{instance_id}".encode()).hexdigest()[:8], 16) / 16**8
        return "test" if bucket < self.s.test_fraction else "train"

    def record(self, c: Candidate) -> dict:
        first = c.answers[0]
        names = [normalize_column(col) for col in first.columns]
        keys = [first.columns[names.index(k)] for k in first.unique_columns]
        rows = dedup_rows(first)
        return {
            "instance_id": c.instance_id,
            "question": c.plan.query,
            "answer": to_markdown_table(first.columns, rows),
            "is_markdown": True,
            "unique_columns": keys,
            "evaluation": {"required": names, "unique_columns": list(first.unique_columns)},
            "language": "en",
            "synthesis": {"source": self.source, "table_id": c.table.table_id, "intent": c.plan.intent,
                          "target_rows": c.target_rows, "rows": len(rows), "agreement": c.agreement,
                          "baseline_item_f1": c.baseline_item_f1},
        }

    def write(self, c: Candidate) -> None:
        if c.drop is not None:
            rows = len(dedup_rows(c.answers[0])) if len(c.answers) == 2 and c.drop["stage"] != "answer" else None
            line = {"instance_id": c.instance_id, "table_id": c.table.table_id, **c.drop, "agreement": c.agreement,
                    "baseline_item_f1": c.baseline_item_f1, "rows": rows, "target_rows": c.target_rows}
            name = DROPS_FILE
        else:
            line, name = self.record(c), SPLIT_FILES[self.split_of(c.instance_id)]
        append_lines(self.out / name, [line])
        self.done.add(c.instance_id)


# ---- the data card and the datasets copy --------------------------------------------------------


def histogram(values: list[float], bins) -> dict[str, int]:
    """Counts per (label, low, high) bin, low <= value < high."""
    counts = {label: 0 for label, _, _ in bins}
    for value in values:
        label = next((label for label, low, high in bins if low <= value < high), None)
        if label is not None:
            counts[label] += 1
    return counts


def card(out_dir: Path, usage: dict | None = None, prices: tuple[float | None, float | None] = (None, None)) -> dict:
    out = Path(out_dir)
    kept = {split: list(read_complete_lines(out / name)) for split, name in SPLIT_FILES.items()}
    drops = list(read_complete_lines(out / DROPS_FILE))
    all_kept = kept["train"] + kept["test"]
    dropped_at = Counter(d["stage"] for d in drops)
    total = len(all_kept) + len(drops)
    passed, remaining = {}, total
    for stage in STAGES:
        remaining -= dropped_at[stage]
        passed[stage] = remaining
    agreements = [r["synthesis"]["agreement"] for r in all_kept] + [d["agreement"] for d in drops
                                                                      if d.get("agreement") is not None]
    result = {
        "candidates": total,
        "kept": {split: len(records) for split, records in kept.items()},
        "passed": passed,  # candidates left after each stage
        "drop_reasons": {f"{stage}/{code}": n for (stage, code), n in
                         sorted(Counter((d["stage"], d["code"]) for d in drops).items())},
        "agreement_histogram": histogram(agreements, AGREEMENT_BINS),
        "row_histogram": histogram([r["synthesis"]["rows"] for r in all_kept], ROW_BINS),
    }
    # Tokens and cost: every call ever generated into this folder (the cache holds each once), so the
    # card states what the data cost to make however many runs it took; calls: this run's.
    generated: dict[str, Counter] = {}
    for entry in read_complete_lines(out / CACHE_FILE):
        tokens = generated.setdefault(entry["stage"], Counter())
        tokens["generated_calls"] += 1
        tokens["prompt_tokens"] += entry["prompt_tokens"]
        tokens["completion_tokens"] += entry["completion_tokens"]
    usage = usage or {}
    result["usage"] = {}
    for stage in sorted(set(generated) | set(usage)):
        tokens, run = generated.get(stage, Counter()), usage.get(stage)
        paid = StageUsage(prompt_tokens=tokens["prompt_tokens"], completion_tokens=tokens["completion_tokens"])
        result["usage"][stage] = {
            "calls_this_run": run.calls if run else 0, "cached_this_run": run.cached_calls if run else 0,
            "generated_calls": tokens["generated_calls"], "prompt_tokens": paid.prompt_tokens,
            "completion_tokens": paid.completion_tokens, "cost": paid.cost(*prices)}
    return result


def render_card(summary: dict, title: str) -> str:
    lines = [f"# {title}", "", f"{summary['candidates']} candidate tasks; kept {summary['kept']['train']} train "
             f"and {summary['kept']['test']} test.", "", "## Candidates left after each stage", "",
             "| stage | left |", "|---|---|"]
    lines += [f"| {stage} | {n} |" for stage, n in summary["passed"].items()]
    lines += ["", "## Drop reasons", "", "| stage/code | tasks |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in summary["drop_reasons"].items()] or ["| (none) | 0 |"]
    for name, key in (("Agreement (item F1 of answer 2 against answer 1)", "agreement_histogram"),
                      ("Rows of the kept tables", "row_histogram")):
        lines += ["", f"## {name}", "", "| bin | tasks | |", "|---|---|---|"]
        lines += [f"| {label} | {n} | {'#' * n if n <= 60 else '#' * 60 + '...'} |"
                  for label, n in summary[key].items()]
    if summary.get("usage"):
        lines += ["", "## Generator usage", "", "Tokens and cost of every call generated into this folder; calls "
                  "of this run, and how many of them the cache answered.", "",
                  "| stage | generated calls | prompt tokens | completion tokens | cost | calls this run | cached |",
                  "|---|---|---|---|---|---|---|"]
        for stage, u in summary["usage"].items():
            cost = "" if u["cost"] is None else f"{u['cost']:.4f}"
            lines.append(f"| {stage} | {u['generated_calls']} | {u['prompt_tokens']} | {u['completion_tokens']} | "
                         f"{cost} | {u['calls_this_run']} | {u['cached_this_run']} |")
    return "\n".join(lines) + "\n"


def save_dataset(out_dir: Path) -> Path:
    """The kept tasks as a `datasets` DatasetDict (one split per non-empty file) in <out>/dataset."""
    import datasets

    out = Path(out_dir)
    splits = {split: list(read_complete_lines(out / name)) for split, name in SPLIT_FILES.items()}
    folder = out / "dataset"
    dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(records)
                                    for split, records in splits.items() if records})
    dataset.save_to_disk(str(folder))
    return folder
