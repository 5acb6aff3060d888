#!/usr/bin/env python3
"""Convert between percent-format scripts and notebooks without outputs.

    python tools/nbtool.py to-ipynb notebooks/src.py notebooks/02_labeling.ipynb
    python tools/nbtool.py to-py notebooks/02_labeling.ipynb /tmp/02.py
    python tools/nbtool.py strip notebooks/*.ipynb

Cells: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell (its
lines written as ``# text``), ``# %% tags=["parameters"]`` the parameters cell.
"""

import json
import re
import sys
from pathlib import Path

import nbformat


def to_ipynb(src: Path, dst: Path) -> None:
    text = Path(src).read_text()
    cells, kind, tags, buf = [], None, [], []

    def flush():
        if kind is None:
            return
        body = "\n".join(buf).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            cell = nbformat.v4.new_code_cell(body)
            if tags:
                cell.metadata["tags"] = tags
            cells.append(cell)

    for line in text.splitlines():
        m = re.match(r"^# %%(.*)$", line)
        if m:
            flush()
            rest = m.group(1)
            kind = "markdown" if "[markdown]" in rest else "code"
            t = re.search(r"tags=(\[.*\])", rest)
            tags = json.loads(t.group(1)) if t else []
            buf = []
        else:
            buf.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    nbformat.write(nb, str(dst))


def to_py(src: Path, dst: Path) -> None:
    nb = nbformat.read(str(src), as_version=4)
    out = []
    for c in nb.cells:
        if c.cell_type == "markdown":
            out.append("# %% [markdown]")
            out += [("# " + line).rstrip() for line in c.source.splitlines()]
        else:
            tags = c.metadata.get("tags", [])
            out.append("# %%" + (f" tags={json.dumps(tags)}" if tags else ""))
            out += c.source.splitlines()
        out.append("")
    Path(dst).write_text("\n".join(out))


def strip(paths) -> None:
    for p in paths:
        nb = nbformat.read(str(p), as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
        nbformat.write(nb, str(p))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"to-ipynb": lambda: to_ipynb(*map(Path, args)), "to-py": lambda: to_py(*map(Path, args)),
     "strip": lambda: strip(args)}[cmd]()
