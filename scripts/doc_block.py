"""Print the commands of the docs' shell block that a script runs word for word.

A block a test cannot run on its own (it needs root and minutes, like the Docker stack) carries
``<!-- run by: SCRIPT -->`` on the line before its fence; SCRIPT reads it with this, so the page
says exactly what was run:

    python3 scripts/doc_block.py README.md scripts/stack-test.sh

prints one command per line (comments and blank lines dropped, ``\\`` continuations joined) and
exits 2 when the page has no such block, or more than one. Standard library only: it runs before
any virtualenv exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_MARKER_RE = re.compile(r"^\s*<!--\s*run by\s*:\s*(?P<script>.+?)\s*-->\s*$")
_FENCE_RE = re.compile(r"^\s*```")


def blocks_run_by(page: Path, script: str) -> list[list[str]]:
    """The bodies of the fenced blocks of ``page`` marked as run by ``script``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[list[str]] = []
    for index, line in enumerate(lines):
        marker = _MARKER_RE.match(line)
        if not marker or marker["script"] != script:
            continue
        start = index + 1
        if start >= len(lines) or not _FENCE_RE.match(lines[start]):
            raise SystemExit(f"{page}:{index + 1}: `run by: {script}` must stand right before a fenced block")
        end = start + 1
        while end < len(lines) and not _FENCE_RE.match(lines[end]):
            end += 1
        found.append(lines[start + 1 : end])
    return found


def commands(body: list[str]) -> list[str]:
    """One line per command: continuations joined, comments (outside quotes) and blank lines dropped."""
    joined: list[str] = []
    pending = ""
    for line in body:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = [line[: _comment_start(line)].rstrip() for line in joined]
    return [line for line in out if line.strip()]


def _comment_start(line: str) -> int:
    """Where a ``#`` comment starts in ``line`` (outside quotes, at a word's start), or its length."""
    quote = ""
    for position, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return position
    return len(line)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    page, script = Path(argv[0]), argv[1]
    found = blocks_run_by(page, script)
    if len(found) != 1:
        print(f"{page}: {len(found)} blocks marked `<!-- run by: {script} -->`, expected 1", file=sys.stderr)
        return 2
    for command in commands(found[0]):
        print(command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
