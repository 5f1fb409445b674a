"""The repository stands on its own: no file points a user at notes outside it.

Background notes its authors kept beside the checkout do not exist for a user; what the product
relies on (the marketplace webhook contract, the Celery settings' reasons) lives in docs/.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Spelled in pieces, so that this file does not name what it looks for.
FORBIDDEN = ("../" + "shared", "shared" + "/reference", "webhook" + "-contract.md")


def repository_files() -> list[str]:
    """Tracked files, and new ones not yet committed (minus what .gitignore leaves out)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    names = [name for name in listed.stdout.decode().split("\0") if name]
    assert names, "git lists no files"
    return [name for name in names if (ROOT / name).is_file()]


def test_no_file_points_outside_the_repository() -> None:
    offenders = []
    for name in repository_files():
        text = (ROOT / name).read_bytes().decode("utf-8", errors="replace")
        offenders += [f"{name}: {pattern}" for pattern in FORBIDDEN if pattern in text]
    assert offenders == [], f"files that point outside the repository: {offenders}"
