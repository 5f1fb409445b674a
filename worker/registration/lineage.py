"""Git lineage of training code, for attributing contributions.

The repository is the one that holds the first code path, else the working directory.
Outside git, or without a git binary, lineage is simply empty.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hokusai_registry.redaction import redact_url

# MLflow's own source tags (shown in its UI) on the run; short tags on the model version.
RUN_TAGS = {
    "commit": "mlflow.source.git.commit",
    "branch": "mlflow.source.git.branch",
    "repo": "mlflow.source.git.repoURL",
}
VERSION_TAGS = {"commit": "git_commit", "branch": "git_branch", "repo": "git_repo"}


def git_lineage(code_paths: list[str] | None = None) -> dict[str, str]:
    """``{"commit", "branch", "repo"}`` of the repository holding ``code_paths`` (or the cwd).

    Keys with no value (a detached HEAD has no branch, a repo may have no remote) are left out.
    Credentials embedded in a remote URL are removed. Asking git costs two subprocesses, so the
    answer is remembered until the repository's HEAD, branch ref or config changes.
    """
    start = _start_dir(code_paths)
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

    None (ask git every time) outside a plain ``.git`` folder: worktrees, submodules, GIT_DIR.
    """
    if "GIT_DIR" in os.environ:
        return None
    for folder in (start, *start.parents):
        git_dir = folder / ".git"
        if git_dir.is_dir():
            try:
                head = (git_dir / "HEAD").read_text().strip()
                ref = git_dir / head.removeprefix("ref: ") if head.startswith("ref: ") else git_dir / "HEAD"
                files = (git_dir / "HEAD", ref, git_dir / "packed-refs", git_dir / "config")
                return (str(git_dir), head, *(_mtime_ns(path) for path in files))
            except OSError:
                return None
        if git_dir.exists():
            return None
    return None


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
