"""Strip outputs, execution counts and run metadata from notebooks, so that git holds only their sources.

    python notebooks/strip_outputs.py                  # every notebooks/*.ipynb, rewritten in place
    python notebooks/strip_outputs.py --check          # exit 1, naming them, if any has outputs
    python notebooks/strip_outputs.py PATH ...         # these notebooks only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def is_stripped(notebook) -> bool:
    return all(not cell.get("outputs") and cell.get("execution_count") is None and "execution" not in cell.metadata
               for cell in notebook.cells if cell.cell_type == "code")


def strip(notebook) -> None:
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; fail if a notebook has outputs")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(HERE.glob("*.ipynb"))
    dirty = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        if is_stripped(notebook):
            continue
        dirty.append(path)
        if not args.check:
            strip(notebook)
            nbformat.write(notebook, path)
            print(f"stripped {path}")
    if args.check and dirty:
        print("notebooks with outputs (run: python notebooks/strip_outputs.py): " + ", ".join(map(str, dirty)),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
