"""task=score: the evaluator's report (evaluation.report) for responses that already exist: an eval folder
of ours (trials.jsonl), or the per-trial response files of the official WideSearch runner.

    python run.py task=score score.responses=<folder> [data=widesearch] [judge=llm]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from wideseek_exp import WideseekError
from wideseek_exp.evaluation import load_eval_tasks, report
from wideseek_exp.tracking import JobRun
from wideseek_exp.trialstore import TRIALS_FILE

OFFICIAL_FILE = re.compile(r"^(?P<stem>.+)_response\.jsonl$")


def read_responses(folder: Path, model_prefix: str | None) -> dict[tuple[str, int], dict]:
    """(instance_id, trial) -> {"response": text} from our trials.jsonl or the official runner's files."""
    if (folder / TRIALS_FILE).is_file():
        trials = {}
        for number, line in enumerate((folder / TRIALS_FILE).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                trials[(record["instance_id"], int(record["sample"]))] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise WideseekError(f"{folder / TRIALS_FILE} line {number}: not a trial record ({error})") from None
        return trials
    trials = {}
    # Official runner: {model}_{instance_id}_{trial}[_multi_agent]_response.jsonl, one record inside
    # with instance_id, response, messages, trial_idx. The record, not the name, says which trial it is.
    for path in sorted(folder.glob("*_response.jsonl")):
        if model_prefix and not path.name.startswith(f"{model_prefix}_"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (str(record["instance_id"]), int(record.get("trial_idx") or 0))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise WideseekError(f"{path} line {number}: not an official response record ({error})") from None
            response = record.get("response")
            trials[key] = {"instance_id": key[0], "sample": key[1],
                           "response": None if response is None or response == "NULL" else response}
    if not trials:
        raise WideseekError(f"no responses in {folder}: expected {TRIALS_FILE} or official *_response.jsonl files"
                            + (f" starting with {model_prefix}_" if model_prefix else ""))
    return trials


def run(cfg: DictConfig, tracker: JobRun, out: Path | None) -> dict:
    if not cfg.score.responses:
        raise WideseekError("task=score needs score.responses=<an eval folder or a folder of official response files>")
    source = Path(cfg.score.responses)
    if not source.is_dir():
        raise WideseekError(f"score.responses folder {source} does not exist")
    trials = read_responses(source, cfg.score.model_prefix)
    tasks = load_eval_tasks(cfg)
    known = {task.instance_id for task in tasks}
    unknown = sorted({instance_id for instance_id, _ in trials} - known)
    if unknown:
        print(f"note: {len(unknown)} response(s) for tasks not in data={cfg.data.name} split={cfg.data.split} "
              f"(first: {unknown[0]}) are ignored", file=sys.stderr)
    samples = max(cfg.eval.samples, 1 + max(sample for _, sample in trials))
    print(f"scoring {len(trials)} responses from {source} against {len(tasks)} tasks (k={samples})", flush=True)
    return report(cfg, tasks, trials, samples, out or source, tracker).headline()
