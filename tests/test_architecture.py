"""The import layering of docs/architecture.md, written as the import-linter contracts of pyproject.toml,
holds on the real tree; and the contracts can fail: a copy of the package with an upward import, and one
with an import cycle hidden in a function, are both refused."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package found first is the one under `root`
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def package_copy(tmp_path):
    """The package and its contracts, copied where a test may break them."""
    shutil.copytree(REPO / "wideseek_exp", tmp_path / "wideseek_exp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def contract_lines(output: str) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary (a long name wraps onto two lines)."""
    text = " ".join(output.split())
    states = {}
    for name in ("Layers:", "Tasks and scoring import no model code", "free of import cycles",
                 "Jobs do not import each other"):
        after = text.split(name, 1)[1] if name in text else ""
        kept, broken = after.find("KEPT"), after.find("BROKEN")
        found = [(i, s) for i, s in ((kept, "KEPT"), (broken, "BROKEN")) if i >= 0]
        states[name] = min(found)[1] if found else "missing"
    return states


def test_the_real_tree_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert set(contract_lines(result.stdout).values()) == {"KEPT"}, result.stdout
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(package_copy):
    # scoring reaching up into the evaluator, at module level
    (package_copy / "wideseek_exp" / "scoring" / "upward.py").write_text(
        '"""A module that breaks the layering."""\n\nfrom wideseek_exp.evaluation import evaluate  # noqa: F401\n')
    result = lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    states = contract_lines(result.stdout)
    assert states["Layers:"] == "BROKEN", result.stdout
    assert "wideseek_exp.scoring.upward -> wideseek_exp.evaluation" in result.stdout


def test_a_cycle_hidden_in_a_function_breaks_the_contracts(package_copy):
    # two sibling modules that import each other, one of them only inside a function
    rl = package_copy / "wideseek_exp" / "rl"
    (rl / "cycle_a.py").write_text('"""Half of a cycle."""\n\n\ndef later():\n'
                                   '    from wideseek_exp.rl import cycle_b  # noqa: F401\n')
    (rl / "cycle_b.py").write_text('"""The other half."""\n\nfrom wideseek_exp.rl import cycle_a  # noqa: F401\n')
    result = lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert contract_lines(result.stdout)["free of import cycles"] == "BROKEN", result.stdout
    assert ".cycle_b -> .cycle_a" in result.stdout or ".cycle_a -> .cycle_b" in result.stdout


def test_a_cycle_through_the_top_breaks_the_layers(package_copy):
    # the shape of the old circle: a job's helper importing back from main, lazily
    (package_copy / "wideseek_exp" / "evaluation.py").open("a").write(
        "\n\ndef _back_to_main():\n    from wideseek_exp.main import run  # noqa: F401\n")
    result = lint_imports(package_copy)
    assert result.returncode != 0, result.stdout
    assert contract_lines(result.stdout)["Layers:"] == "BROKEN", result.stdout
