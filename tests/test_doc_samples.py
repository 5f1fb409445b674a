"""Docs as tests: every shell command and code sample in README.md and docs/*.md runs as written.

Each fenced block is one test case named by its page and line (``README.md:37``). The rules a sample
runs by (which blocks, the ``illustrative`` and ``runs with`` markers, the environment, long-running
commands, expected exit codes, Redis) are written once, in the docstring of :mod:`tests.doc_samples`.
A document that goes wrong (a command renamed, an option gone, an exit code changed, an import
moved) fails here, naming the line.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.doc_samples import (
    DOCS_REDIS_URL,
    PAGES,
    ROOT,
    RUNS_WITH,
    FreshInstall,
    Sample,
    all_samples,
    clean_copy,
    commands_of,
    installs_packages,
    python_script,
    run_script,
    sample_environment,
    samples_of,
    sets_redis_url,
    shell_script,
    shown_script,
    split_comment,
)
from tests.support import require_service

SAMPLES = all_samples()
RUNNABLE = [sample for sample in SAMPLES if sample.runnable]
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------- the rules
def test_every_fenced_block_names_its_language() -> None:
    untagged = [sample.where for sample in SAMPLES if not sample.language]
    assert untagged == [], f"fenced blocks without a language (```bash, ```python, ```json, ...): {untagged}"


def test_illustrative_samples_say_why() -> None:
    without_reason = [sample.where for sample in SAMPLES if sample.illustrative == ""]
    assert without_reason == [], f"`<!-- illustrative: REASON -->` needs a reason: {without_reason}"


def test_services_a_sample_runs_with_are_known_and_said_in_the_text() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for sample in samples_of(page):
            for name in sample.runs_with:
                assert name in RUNS_WITH, f"{sample.where}: `runs with: {name}` is none of {sorted(RUNS_WITH)}"
                assert RUNS_WITH[name][1] in text, f"{sample.where} runs {name}; the page must say so"


def test_samples_keep_to_the_docs_redis_database() -> None:
    for sample in RUNNABLE:
        for url in sets_redis_url(sample):
            if url.startswith(("redis://127.0.0.1:6379", "redis://localhost:6379")):
                assert url == DOCS_REDIS_URL, f"{sample.where} uses {url}; the docs' samples use {DOCS_REDIS_URL}"


def test_blocks_run_by_a_script_are_run_by_it_word_for_word() -> None:
    """``<!-- run by: SCRIPT -->``: SCRIPT reads the block from its page, or holds each command verbatim."""
    from scripts.doc_block import blocks_run_by, commands

    marked = [sample for sample in SAMPLES if sample.run_by is not None]
    assert any(s.page.name == "README.md" for s in marked), "the README's stack lines are run by no script"
    for sample in marked:
        assert sample.run_by is not None and sample.kind == "shell", f"{sample.where}: only shell blocks are run by"
        script = ROOT / sample.run_by
        assert script.is_file(), f"{sample.where}: run by {sample.run_by}, which does not exist"
        text = script.read_text(encoding="utf-8")
        page = sample.page.relative_to(ROOT)
        expected = [split_comment(line)[0].rstrip() for line in commands_of(sample)]
        expected = [line for line in expected if line.strip()]
        if f"scripts/doc_block.py {page} {sample.run_by}" in text:
            (body,) = blocks_run_by(sample.page, sample.run_by)
            assert commands(body) == expected, f"{sample.where}: doc_block.py reads {commands(body)}"
        else:
            missing = [line for line in expected if line not in text]
            assert not missing, f"{sample.where}: {sample.run_by} neither reads the block nor runs {missing}"


def test_the_runner_finds_samples_of_every_page() -> None:
    for page in PAGES:
        if "```" in page.read_text(encoding="utf-8"):
            assert samples_of(page), f"{page.name} has fences but no sample was found"


# ---------------------------------------------------------------------------------- the samples
@pytest.fixture
def docs_redis() -> Iterator[redis.Redis]:
    """The docs' Redis database, empty before and after each sample."""
    require_service("Redis", "127.0.0.1", 6379)
    client = redis.Redis.from_url(DOCS_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.mark.slow
@pytest.mark.parametrize("sample", RUNNABLE, ids=[sample.where for sample in RUNNABLE])
def test_sample_runs_as_written(
    sample: Sample, tmp_path: Path, request: pytest.FixtureRequest, docs_redis: redis.Redis
) -> None:
    venv_bin = VENV_BIN
    if installs_packages(sample):
        fresh: FreshInstall = request.getfixturevalue("fresh_install")
        venv_bin = fresh.bin
    folder = clean_copy(tmp_path / "checkout")
    logs = tmp_path / "logs"
    logs.mkdir()
    script = python_script(sample, folder, logs) if sample.kind == "python" else shell_script(sample, logs)
    outcome = run_script(script, folder, sample_environment(venv_bin))
    background = "".join(
        f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in sorted(logs.iterdir())
    )
    assert outcome.returncode == 0, (
        f"{sample.where} ({sample.kind}) exited {outcome.returncode}:\n{outcome.output[-6000:]}"
        f"\n--- the script run (after the harness's preamble)\n{shown_script(outcome.script)}{background}"
    )
    shutil.rmtree(folder, ignore_errors=True)
