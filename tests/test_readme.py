"""The README is a guide users paste from: its tutorial runs as written, every other `kdata`
example names commands and options that exist, and every relative link in it and in docs/
points at a file of the checkout.

The tutorial's blocks run in order in one fresh folder: ```toml / ```python blocks whose first
line is `# NAME` are saved as NAME, ```bash blocks run in bash with the installed `kdata` on
PATH (a failing command or a traceback fails the test). ```console blocks (the real data: the
Hub, buckets, terabytes) cannot run here; their `kdata` lines are checked against the CLI.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from kohaku_data.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TUTORIAL_HEADING = "## Tutorial"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else len(text)]


def _blocks(text: str) -> list[Block]:
    return [Block(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _kdata_lines(text: str) -> list[str]:
    """`kdata …` commands of console/bash blocks (one per line, comments cut)."""
    lines = []
    for block in _blocks(text):
        if block.lang not in ("bash", "console", "sh"):
            continue
        for line in block.text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("kdata "):
                lines.append(line)
    return lines


def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    tutorial = _section(README.read_text(), TUTORIAL_HEADING)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "120"}
    ran = 0
    for block in _blocks(tutorial):
        first = block.text.splitlines()[0] if block.text else ""
        if block.lang in ("toml", "python") and first.startswith("# "):
            (tmp_path / first[2:].strip()).write_text(block.text)
        elif block.lang == "bash":
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            shown = f"$ {block.text}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
            assert proc.returncode == 0, shown
            assert "Traceback" not in proc.stderr, shown
            ran += 1
    assert ran >= 6, "the tutorial lost its runnable steps"
    # What the steps promise exists: two versions, their diff-able manifests, an export.
    for path in ("datasets/my-first-1/manifest.parquet", "datasets/my-first-2/dataset.lock",
                 "datasets/my-first-1/README.md", "export/kohya/dataset.toml"):
        assert (tmp_path / path).exists(), path


def _command(root: Any, words: list[str]) -> tuple[Any, list[str]]:
    """The (sub)command the words name and the words left for its options."""
    command = root
    # typer ships its own copy of click: groups are recognised by their `commands`, not by class.
    while words and words[0] in (getattr(command, "commands", None) or {}):
        command, words = command.commands[words[0]], words[1:]
    return command, words


def test_every_kdata_example_names_real_commands_and_options() -> None:
    root = typer.main.get_command(app)
    lines = _kdata_lines(README.read_text())
    assert len(lines) >= 10
    for line in lines:
        words = shlex.split(line)[1:]
        command, rest = _command(root, words)
        assert command is not root, f"{line!r}: no such command"
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        used = {word.split("=", 1)[0] for word in rest if word.startswith("--")}
        assert used <= known, f"{line!r}: unknown options {sorted(used - known)} (known: {sorted(known)})"


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "pipelines" / "README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = [target for target in LINK.findall(doc.read_text())
              if "://" not in target and not target.startswith("mailto:")
              and not (doc.parent / target).exists()]
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"
