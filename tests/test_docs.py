"""The README and docs/ stay true to the repository: every link and every path they name exists, the
README stays a short guide, and docs/architecture.md names every module of the package and draws the
layering that pyproject.toml's import-linter contract checks."""

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "experiments").glob("**/README.md")),
         REPO / "data" / "README.md", REPO / "notebooks" / "README.md", REPO / "tests" / "fixtures" / "README.md"]
GENERATED_OR_USER_DATA = ("data/generated", "data/widesearch", "data/wideseek_train", "data/wideseek_r1")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_named_path_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = [link for link in re.findall(r"\]\(([^)#\s]+)", text)
               if not link.startswith(("http://", "https://")) and not (page.parent / link).exists()]
    for path in re.findall(r"`((?:wideseek_exp|experiments|conf|docs|tests|notebooks|data)/[\w./-]+)`", text):
        path = path.rstrip("/.")
        if not path.startswith(GENERATED_OR_USER_DATA) and not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"{page.relative_to(REPO)} names what does not exist: {missing}"


def test_the_readme_is_a_short_guide():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 10_240
    for needed in ("make run", "make test", "task=build", "task=eval", "task=train", "-m", "docs/architecture.md"):
        assert needed in readme, needed


def test_the_architecture_page_names_every_module():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = REPO / "wideseek_exp"
    for path in sorted(package.iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        if name.startswith("__") or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
            continue
        assert re.search(rf"\b{name}(\.py|/)", page), f"docs/architecture.md does not place wideseek_exp/{path.name}"


def test_the_architecture_page_draws_the_checked_layers():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Layering", 1)[1].split("\n## ", 1)[0]
    block = section.split("\n\n    ", 1)[1].split("\n\n", 1)[0]  # the first indented block: the layers
    rows = [line.split("(")[0].strip() for line in block.splitlines()]
    assert rows == [layer.replace("wideseek_exp.", "") for layer in layers]
