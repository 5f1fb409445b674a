"""Git lineage is remembered between registrations, but never past a change in the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker.registration import lineage
from worker.registration.lineage import git_lineage


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_lineage_follows_commits_branches_and_remotes(tmp_path: Path) -> None:
    repo = tmp_path / "training"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ds@example.com")
    git(repo, "config", "user.name", "DS")
    script = repo / "train.py"
    script.write_text("print(1)\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    first = git_lineage([str(script)])
    assert first == {"commit": git(repo, "rev-parse", "HEAD"), "branch": "main"}
    assert git_lineage([str(script)]) == first  # remembered, and still right

    script.write_text("print(2)\n")
    git(repo, "commit", "-qam", "second")
    assert git_lineage([str(script)])["commit"] == git(repo, "rev-parse", "HEAD") != first["commit"]

    git(repo, "checkout", "-q", "-b", "feature")
    assert git_lineage([str(script)])["branch"] == "feature"

    git(repo, "remote", "add", "origin", "https://user:token@git.example/org/training.git")
    assert git_lineage([str(script)])["repo"] == "https://git.example/org/training.git"

    git(repo, "checkout", "-q", "--detach")
    assert "branch" not in git_lineage([str(script)])


def test_outside_git_there_is_no_lineage(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    assert git_lineage([str(script)]) == {}


def test_outside_git_no_git_process_is_started_and_a_new_repository_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    started: list[tuple[str, ...]] = []
    real_git = lineage._git

    def counting_git(cwd: Path, *args: str) -> str | None:
        started.append(args)
        return real_git(cwd, *args)

    monkeypatch.setattr(lineage, "_git", counting_git)
    assert git_lineage([str(script)]) == {}
    assert started == [], "no repository anywhere above: git must not be started"

    git(tmp_path, "init", "-q", "-b", "main")  # nothing negative was remembered
    git(tmp_path, "config", "user.email", "ds@example.com")
    git(tmp_path, "config", "user.name", "DS")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    assert git_lineage([str(script)]) == {"commit": git(tmp_path, "rev-parse", "HEAD"), "branch": "main"}


def test_lineage_in_a_worktree_is_remembered_and_follows_its_commits(tmp_path: Path) -> None:
    repo = tmp_path / "training"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ds@example.com")
    git(repo, "config", "user.name", "DS")
    (repo / "train.py").write_text("print(1)\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    tree = tmp_path / "tree"
    git(repo, "worktree", "add", "-q", "-b", "feature", str(tree))
    script = tree / "train.py"
    first = git_lineage([str(script)])
    assert first == {"commit": git(tree, "rev-parse", "HEAD"), "branch": "feature"}
    assert lineage._repository_fingerprint(tree) is not None  # a .git file is followed, so remembered
    script.write_text("print(2)\n")
    git(tree, "commit", "-qam", "second")
    assert git_lineage([str(script)])["commit"] == git(tree, "rev-parse", "HEAD") != first["commit"]
