"""The code samples of README.md and docs/*.md, and how the docs tests run them as written.

The rules (tests/test_doc_samples.py runs every sample by them):

- **Which blocks.** Every fenced block names its language. ``bash``/``sh``/``shell``/``console`` blocks
  are shell samples and ``python``/``py`` blocks Python samples: both are run. Any other language
  (``json``, ``text``, ``yaml``, ...) is data or output, shown and not run. An untagged fence fails.
- **Illustrative.** A sample that cannot run on one machine carries ``<!-- illustrative: REASON -->`` on
  the line before its fence; the reason is required. Nothing else is skipped.
- **Run by a script.** A block that needs root and minutes (the Docker stack) carries
  ``<!-- run by: SCRIPT -->``: SCRIPT runs it word for word, either reading it from the page
  (``scripts/doc_block.py PAGE SCRIPT``) or holding each of its commands verbatim; this test checks
  which, and does not run the block itself.
- **Services the text says are running.** ``<!-- runs with: a worker -->`` before a fence starts what
  :data:`RUNS_WITH` names (the documented command, in the sample's own environment and folder) for the
  sample's duration; the page's text must say so too.
- **Where.** Each sample runs in its own clean copy of the checkout (``git ls-files``: tracked and new,
  unignored files), so ``./scripts/...`` and ``python -m devtools.receiver`` work as in a fresh clone,
  and the default ``HOKUSAI_HOME`` (``.hokusai`` in that folder) is new for every sample.
- **Environment.** Only the machine's own (:data:`PASSED_THROUGH`: PATH, HOME, locale, pip's machine
  set-up) plus what the page sets: the ``export NAME=...`` lines of the page's earlier shell blocks run
  first, then the sample. No product variable of the test process reaches a sample.
- **Which Python.** The project's virtualenv is first on PATH; a shell sample that runs ``pip install``
  gets the fresh virtualenv of :func:`fresh_install` instead (made once per session from a clean copy,
  the walk-through uses the same one), so no sample installs into the project's own.
- **Shell.** A sample runs under ``bash -euo pipefail``: any failing command fails it. A command whose
  comment ends with ``exit N`` (``# never enqueued: exit 1``) must exit with N; an ``exit N`` earlier in
  a comment describes a case (``# exit 3 at the timeout``) and is not checked. A trailing
  ``; echo "exit $?"`` that shows the code to the reader is left out: the test checks it itself. A
  command that runs until stopped (:data:`SERVERS`: a worker, Flower, the sample receiver) runs in the
  background until the sample ends, and the next line waits, with a deadline, until its log says it is
  ready. Everything a sample started (its process group) is stopped after it.
- **Python.** A Python sample runs alone in a fresh interpreter (``python sample.py``), so each block is
  complete: its own imports and objects. Output is not compared: a sample passes when it exits 0.
- **Redis.** A sample that sets ``REDIS_URL`` to this machine's Redis uses database :data:`DOCS_REDIS_DB`
  (never the tests', nor 0, a developer's and the demo's); it is flushed before and after each sample.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PYTHON_LANGUAGES = {"python", "py"}

#: The Redis database of the docs' samples: not 0 (a developer's, the demo's), not the tests' (15 and down, 14).
DOCS_REDIS_DB = 5
DOCS_REDIS_URL = f"redis://127.0.0.1:6379/{DOCS_REDIS_DB}"

#: Variables of the machine (not of the product) a sample inherits.
PASSED_THROUGH = ("HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "TERM", "SHELL")
PASSED_THROUGH_PREFIXES = ("PIP_",)

#: Commands that run until stopped: (pattern of the command, pattern of its "ready" log line).
SERVERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(\w+=\S+\s+)*(opentelemetry-instrument\s+)?celery -A worker worker\b"), r"ready\."),
    (re.compile(r"^(\w+=\S+\s+)*celery -A worker flower\b"), r"Visit me at|Registered tasks"),
    (re.compile(r"^(\w+=\S+\s+)*python -m devtools\.receiver\b"), r"webhook receiver listening"),
)

#: What ``<!-- runs with: ... -->`` can start: (the documented command, what the page's text must say).
RUNS_WITH = {"a worker": ("celery -A worker worker --loglevel INFO", "with a worker running")}

SAMPLE_TIMEOUT_S = 240.0
READY_TIMEOUT_S = 120

_FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<info>[^`]*)$")
_MARKER_RE = re.compile(r"^\s*<!--\s*(?P<key>illustrative|runs with|run by)\s*:?\s*(?P<value>.*?)\s*-->\s*$")
_EXPORT_RE = re.compile(r"^\s*export\s+[A-Za-z_][A-Za-z0-9_]*=")
_EXPECT_RE = re.compile(r"\bexit\s+(?P<code>\d+)\W*$")
_SHOW_STATUS_RE = re.compile(r"\s*;\s*echo\s+[\"']?exit \$\?[\"']?\s*$")
_HEREDOC_RE = re.compile(r"<<-?\s*['\"]?(?P<word>[A-Za-z_][A-Za-z0-9_]*)['\"]?")


@dataclass(frozen=True)
class Sample:
    """One fenced block of a page."""

    page: Path
    line: int  #: 1-based line of the opening fence
    language: str  #: the info string's first word ("" when untagged)
    code: str
    illustrative: str | None = None  #: the reason, when marked illustrative ("" when marked without one)
    runs_with: tuple[str, ...] = ()
    run_by: str | None = None  #: the script that runs it word for word, when marked ``run by``
    exports: tuple[str, ...] = field(default=(), repr=False)  #: export lines of the page's earlier shell blocks

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.language in SHELL_LANGUAGES:
            return "shell"
        if self.language in PYTHON_LANGUAGES:
            return "python"
        return "data"

    @property
    def runnable(self) -> bool:
        return self.kind != "data" and self.illustrative is None and self.run_by is None


def samples_of(page: Path) -> list[Sample]:
    """Every fenced block of ``page``, with its marker and the page's earlier exports."""
    lines = page.read_text(encoding="utf-8").splitlines()
    samples: list[Sample] = []
    exports: list[str] = []
    index = 0
    while index < len(lines):
        opening = _FENCE_RE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            body.append(lines[end][indent:] if lines[end][:indent].strip() == "" else lines[end])
            end += 1
        illustrative, runs_with, run_by = None, [], None
        before = index - 1
        while before >= 0 and (marker := _MARKER_RE.match(lines[before])):
            if marker["key"] == "illustrative":
                illustrative = marker["value"]
            elif marker["key"] == "run by":
                run_by = marker["value"]
            else:
                runs_with.append(marker["value"])
            before -= 1
        language = (opening["info"].split() or [""])[0].lower()
        sample = Sample(page, index + 1, language, "\n".join(body) + "\n", illustrative, tuple(runs_with),
                        run_by=run_by, exports=tuple(exports))  # fmt: skip
        samples.append(sample)
        if sample.kind == "shell":
            exports.extend(line for line in commands_of(sample) if _EXPORT_RE.match(line))
        index = end + 1
    return samples


def all_samples() -> list[Sample]:
    return [sample for page in PAGES for sample in samples_of(page)]


# ------------------------------------------------------------------------------ shell
def commands_of(sample: Sample) -> list[str]:
    """The logical lines of a shell sample (continuations joined; a console block's ``$`` lines only)."""
    raw = sample.code.splitlines()
    if sample.language == "console":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    logical: list[str] = []
    pending = ""
    for line in raw:
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    return logical


def split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)``: the comment starts at a ``#`` outside quotes after a blank."""
    quote = ""
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip(), line[position + 1 :].strip()
    return line.rstrip(), ""


_PREAMBLE = r"""
__hk_wait_ready() {  # pid log pattern timeout_s: wait until the log matches; fail if the process ends
  local deadline=$((SECONDS + $4))
  until grep -Eq "$3" "$2" 2>/dev/null; do
    if ! kill -0 "$1" 2>/dev/null; then
      echo "docs test: background command ended early:" >&2; tail -n 40 "$2" >&2; exit 97
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "docs test: not ready after $4 s:" >&2; tail -n 40 "$2" >&2; exit 97
    fi
    sleep 0.2
  done
}
__hk_expect() {  # expected actual command
  if [ "$1" != "$2" ]; then echo "docs test: '$3' exited $2, the document says exit $1" >&2; exit 98; fi
}
"""


_SAMPLE_STARTS = "# ---- the sample"


def shown_script(script: str) -> str:
    """The part of a script worth showing in a failure: the page's exports and the sample, as run."""
    return script.split(_SAMPLE_STARTS, 1)[-1]


def shell_script(sample: Sample, log_dir: Path) -> str:
    """The sample as the bash script the test runs: the page's exports, then its commands, as written."""
    out = ["set -euo pipefail", _PREAMBLE, _SAMPLE_STARTS]
    out.extend(sample.exports)
    for name in sample.runs_with:
        out.extend(_background(RUNS_WITH[name][0], log_dir, len(out)))
    heredoc_end: str | None = None
    for line in commands_of(sample):
        if heredoc_end is not None:
            out.append(line)
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        command, comment = split_comment(line)
        if (heredoc := _HEREDOC_RE.search(command)) is not None:
            heredoc_end = heredoc["word"]
            out.append(line)
        elif command and any(pattern.match(command.strip()) for pattern, _ in SERVERS):
            out.extend(_background(command.strip(), log_dir, len(out)))
        elif command and (expected := _EXPECT_RE.search(comment)) is not None:
            command = _SHOW_STATUS_RE.sub("", command)  # the reader's `; echo "exit $?"`: the test checks instead
            out.append(f"__hk_rc=0; {command} || __hk_rc=$?")
            out.append(f'__hk_expect {expected["code"]} "$__hk_rc" {shlex.quote(command.strip())}')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _background(command: str, log_dir: Path, number: int) -> list[str]:
    ready = next(ready for pattern, ready in SERVERS if pattern.match(command))
    log = log_dir / f"background-{number}.log"
    return [
        f"( {command} ) > {shlex.quote(str(log))} 2>&1 &",
        f"__hk_wait_ready $! {shlex.quote(str(log))} {shlex.quote(ready)} {READY_TIMEOUT_S}",
    ]


def python_script(sample: Sample, folder: Path, log_dir: Path) -> str:
    """A Python sample as a bash script: what it runs with, then ``python sample.py``."""
    path = folder / f"sample_{sample.line}.py"
    path.write_text(sample.code, encoding="utf-8")
    return shell_script(Sample(sample.page, sample.line, "bash", f"python {path.name}\n", None, sample.runs_with,
                               exports=sample.exports), log_dir)  # fmt: skip


# ------------------------------------------------------------------------------ running
def clean_copy(target: Path) -> Path:
    """The checkout's files as a fresh clone has them (tracked and new, unignored files), under ``target``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout  # fmt: skip
    for name in sorted({name for name in listed.decode().split("\0") if name}):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is listed but absent
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


def sample_environment(venv_bin: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}
    env.update({name: value for name, value in os.environ.items() if name.startswith(PASSED_THROUGH_PREFIXES)})
    env["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    return env


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str
    script: str


def run_script(script: str, folder: Path, env: dict[str, str], timeout_s: float = SAMPLE_TIMEOUT_S) -> Outcome:
    """Run ``script`` with bash in ``folder``; stop everything it started (its process group) afterwards."""
    (folder / ".docs-sample.sh").write_text(script, encoding="utf-8")
    process = subprocess.Popen(["bash", ".docs-sample.sh"], cwd=folder, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout_s)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = -1
        output += f"\ndocs test: the sample did not finish within {timeout_s:g} s".encode()
    finally:
        stop_group(process.pid)
    return Outcome(returncode, output.decode(errors="replace"), script)


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, timeout_s: float = 30) -> None:
    """SIGTERM what is left of the group (background servers: a warm shutdown); SIGKILL what lingers."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout_s
    while _signal_group(pgid, 0):
        if time.monotonic() > deadline:
            _signal_group(pgid, signal.SIGKILL)
            break
        time.sleep(0.1)


def installs_packages(sample: Sample) -> bool:
    return any(re.search(r"\bpip\s+install\b", split_comment(line)[0]) for line in commands_of(sample))


def sets_redis_url(sample: Sample) -> list[str]:
    """The Redis URLs the sample (or its page before it) sets."""
    text = "\n".join([*sample.exports, sample.code])
    return re.findall(r"REDIS_URL=['\"]?(redis://[^\s'\"]+)", text) + re.findall(
        r"environ\[['\"]REDIS_URL['\"]\]\s*=\s*['\"](redis://[^'\"]+)", text
    )


@dataclass
class FreshInstall:
    """A clean copy of the checkout and a fresh virtualenv with ``pip install ".[server]"`` done in it."""

    checkout: Path
    venv: Path
    install_s: float

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def make_fresh_install(parent: Path) -> FreshInstall:
    """What an operator does first on a fresh clone: a virtualenv, then ``pip install ".[server]"``."""
    checkout = clean_copy(parent / "checkout")
    venv = parent / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = sample_environment(venv / "bin")
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", ".[server]"], cwd=checkout,
                               env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    if installed.returncode != 0:
        raise RuntimeError(f'pip install ".[server]" failed:\n{installed.stdout[-3000:]}{installed.stderr[-3000:]}')
    return FreshInstall(checkout, venv, time.monotonic() - started)
