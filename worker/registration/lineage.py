"""Git lineage of training code, for attributing contributions.

The repository is the one that holds the first code path, else the working directory.
Outside git, or without a git binary, lineage is simply empty. The tags it is recorded under are
``worker.registration.tags.RUN_GIT_TAGS`` and ``VERSION_GIT_TAGS``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hokusai_registry.redaction import redact_url


def git_lineage(code_paths: list[str] | None = None) -> dict[str, str]:
    """``{"commit", "branch", "repo"}`` of the repository holding ``code_paths`` (or the cwd).

    Keys with no value (a detached HEAD has no branch, a repo may have no remote) are left out.
    Credentials embedded in a remote URL are removed. Asking git costs two subprocesses, so the
    answer is remembered until the repository's HEAD, branch ref or config changes.
    """
    start = _start_dir(code_paths)
    if _outside_any_repository(start):
        return {}  # git would find nothing: do not start it (two subprocesses)
    fingerprint = _repository_fingerprint(start)
    if fingerprint is not None and fingerprint in _remembered:
        return dict(_remembered[fingerprint])
    lineage = _ask_git(start)
    if fingerprint is not None:
        if len(_remembered) >= _MAX_REMEMBERED:
            _remembered.clear()
        _remembered[fingerprint] = lineage
    return dict(lineage)


_MAX_REMEMBERED = 64
_remembered: dict[tuple[object, ...], dict[str, str]] = {}


def _repository_fingerprint(start: Path) -> tuple[object, ...] | None:
    """What changes when the answer may: HEAD's content, and the mtimes of the files behind it.

    Follows a plain ``.git`` folder and a ``.git`` file (``gitdir: ...``: worktrees, submodules);
    None (ask git every time) with ``GIT_DIR`` or anything unreadable.
    """
    if "GIT_DIR" in os.environ:
        return None
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if not dot_git.exists():
            continue
        try:
            git_dir = dot_git if dot_git.is_dir() else _linked_git_dir(dot_git)
            if git_dir is None:
                return None
            common = git_dir / "commondir"
            common_dir = (git_dir / common.read_text().strip()).resolve() if common.is_file() else git_dir
            head = (git_dir / "HEAD").read_text().strip()
            ref_name = head.removeprefix("ref: ") if head.startswith("ref: ") else None
            refs = (git_dir / ref_name, common_dir / ref_name) if ref_name else (git_dir / "HEAD",)
            files = (git_dir / "HEAD", *refs, common_dir / "packed-refs", common_dir / "config")
            return (str(git_dir), head, *(_mtime_ns(path) for path in files))
        except OSError:
            return None
    return None


def _linked_git_dir(dot_git_file: Path) -> Path | None:
    """The folder a ``.git`` file points at (``gitdir: <path>``), or None."""
    text = dot_git_file.read_text().strip()
    if not text.startswith("gitdir:"):
        return None
    target = Path(text.removeprefix("gitdir:").strip())
    target = target if target.is_absolute() else (dot_git_file.parent / target)
    return target.resolve() if target.is_dir() else None


def _outside_any_repository(start: Path) -> bool:
    """No ``GIT_DIR`` and no ``.git`` (folder or file) in ``start`` or above: git finds no repository."""
    if "GIT_DIR" in os.environ:
        return False
    return not any((folder / ".git").exists() for folder in (start, *start.parents))


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def _ask_git(start: Path) -> dict[str, str]:
    parsed = _git(start, "rev-parse", "HEAD", "--abbrev-ref", "HEAD")
    if parsed is None:
        return {}
    lines = parsed.splitlines()
    if len(lines) < 2:
        return {}
    lineage = {"commit": lines[0].strip()}
    if lines[1].strip() and lines[1].strip() != "HEAD":
        lineage["branch"] = lines[1].strip()
    remote = _git(start, "config", "--get", "remote.origin.url")
    if remote and remote.strip():
        lineage["repo"] = redact_url(remote.strip())
    return lineage


def _start_dir(code_paths: list[str] | None) -> Path:
    for raw in code_paths or []:
        path = Path(raw).expanduser()
        if path.exists():
            return (path if path.is_dir() else path.parent).resolve()
    return Path(os.getcwd())


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
