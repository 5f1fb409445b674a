"""The operator docs stay true: every setting documented with its real default, every
``hokusai-registry`` command they show exists, every link resolves, every queue/task name is real.

The samples themselves (every shell command and code block) run in tests/test_doc_samples.py."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from hokusai_registry import contract
from hokusai_registry.settings import Settings
from worker import spans

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"

_ROW_RE = re.compile(r"^\|\s*`(?P<name>[A-Z][A-Z0-9_]*)`\s*\|(?P<default>[^|]*)\|(?P<meaning>[^|]*)\|\s*$")
_LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_NAME_RE = re.compile(r"\bhokusai\.[a-z_]+\b")
_SHELL_STOP = {"|", "||", "&&", ";", "#", ">", ">>", "<"}


def settings_env_names() -> dict[str, str]:
    """Environment variable name -> Settings field name, for every field the Settings object reads."""
    return Settings.env_var_names()


def strings_in(node: object) -> list[str]:
    """Every string in a parsed YAML document (keys and values; comments are gone)."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*strings_in(key), *strings_in(value))]
    if isinstance(node, list):
        return [s for item in node for s in strings_in(item)]
    return [node] if isinstance(node, str) else []


def doc_pages() -> list[Path]:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    return pages


def table_rows(text: str) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = _ROW_RE.match(line.strip())
        if match:
            rows[match["name"]] = (match["default"].strip(), match["meaning"].strip())
    return rows


def code_snippets(text: str) -> list[str]:
    """Lines of fenced code blocks, and inline code spans outside them."""
    snippets: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            snippets.append(line)
        else:
            snippets.extend(re.findall(r"`([^`]+)`", line))
    return snippets


def cli_invocations(text: str) -> list[list[str]]:
    """The words after each ``hokusai-registry`` in the code of a page, up to a shell operator."""
    invocations = []
    for snippet in code_snippets(text):
        words = snippet.split()
        for index, word in enumerate(words):
            if word != "hokusai-registry":
                continue
            rest: list[str] = []
            for token in words[index + 1 :]:
                if token in _SHELL_STOP or token.startswith("#"):
                    break
                rest.append(token.strip("[]"))
            invocations.append(rest)
    return invocations


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


# ---------------------------------------------------------------------------------- configuration
def test_configuration_documents_every_setting() -> None:
    rows = table_rows(CONFIGURATION.read_text(encoding="utf-8"))
    missing = sorted(set(settings_env_names()) - set(rows))
    assert not missing, f"docs/configuration.md has no table row for {missing}"
    for name in settings_env_names():
        default, meaning = rows[name]
        assert default and meaning, f"docs/configuration.md: {name} needs a default and a meaning"


def test_configuration_shows_the_real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = table_rows(CONFIGURATION.read_text(encoding="utf-8"))
    for name, field in settings_env_names().items():
        assert name in rows, f"docs/configuration.md has no table row for {name}"
        default_cell = rows[name][0]
        default = Settings.model_fields[field].get_default(call_default_factory=True)
        if default in (None, [], ""):
            assert default_cell.startswith("unset"), f"{name} has no default; the page says {default_cell!r}"
            continue
        shown = re.fullmatch(r"`([^`]*)`", default_cell)
        assert shown, f"docs/configuration.md: {name}'s default should be one `value`, not {default_cell!r}"
        monkeypatch.setenv(name, shown[1])
        assert getattr(Settings(), field) == default, f"docs/configuration.md: {name} default {shown[1]!r} is wrong"
        monkeypatch.delenv(name)


def test_configuration_documents_every_compose_variable() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", " ".join(strings_in(compose))))
    missing = sorted(name for name in used if f"`{name}`" not in text)
    assert not missing, f"docs/configuration.md does not document compose variables {missing}"


# ---------------------------------------------------------------------------------- all pages
def test_documented_commands_exist() -> None:
    from hokusai_app.cli import main

    for page in doc_pages():
        for words in cli_invocations(page.read_text(encoding="utf-8")):
            command: click.Command = main
            path = ["hokusai-registry"]
            while words and isinstance(command, click.Group) and not words[0].startswith("-"):
                sub = command.commands.get(words[0])
                assert sub is not None, f"{page.name}: `{' '.join(path)} {words[0]}` does not exist"
                command, path, words = sub, [*path, words[0]], words[1:]
            known = {opt for param in command.params for opt in param.opts} | {"--help", "-h"}
            for word in words:
                option = word.split("=", 1)[0]
                if option.startswith("-"):
                    assert option in known, f"{page.name}: `{' '.join(path)}` has no option {option}"


def test_links_between_pages_resolve() -> None:
    for page in doc_pages():
        for match in _LINK_RE.finditer(page.read_text(encoding="utf-8")):
            target = match["target"]
            if re.match(r"^[a-z]+:", target):
                continue  # external
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            assert linked.is_file(), f"{page.name} links to missing {target}"
            if anchor:
                assert anchor in anchors_of(linked), f"{page.name} links to missing heading {target}"


def test_queue_and_task_names_are_real() -> None:
    real = {contract.REGISTRATION_QUEUE, contract.WEBHOOK_QUEUE, contract.REGISTER_TASK, contract.WEBHOOK_TASK,
            spans.REGISTER_SPAN, spans.WEBHOOK_SPAN, spans.JOB_ID_ATTRIBUTE, spans.EVENT_ID_ATTRIBUTE}  # fmt: skip
    for page in doc_pages():
        for name in _NAME_RE.findall(page.read_text(encoding="utf-8")):
            assert name in real, f"{page.name} names {name!r}, which is no queue or task of the contract"


def _layout_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_readme_layout_names_every_module_and_only_real_paths() -> None:
    rows = _layout_rows()
    missing = []
    for package in ("hokusai_registry", "producers", "worker", "hokusai_app", "devtools"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            folder = str(path.parent.relative_to(ROOT)) + "/"
            named = [row for row in rows if f"`{folder}" in row or f"`{path.relative_to(ROOT)}`" in row]
            if not any(path.name.removesuffix(".py") in row for row in named):
                missing.append(str(path.relative_to(ROOT)))
    assert missing == [], f"modules the README's layout table does not name: {missing}"
    for row in rows:
        first = row.split("|")[1].strip().split("`")[1]
        assert (ROOT / first).exists(), f"the layout table names {first}, which does not exist"
