"""Every `hubert-ecg ...` command line the docs show is accepted by the real parser, so docs cannot drift.

Sources: fenced code blocks and inline code spans of README.md and docs/*.md that start with
``hubert-ecg `` (after an optional ``$ `` prompt), and the option snippets (`` `--flag VALUE` ``) in the
`hubert-ecg` column of docs/REFERENCE_MAPPING.md's tables for ``finetune.py`` and ``test.py``, checked as
options of ``finetune`` / ``evaluate``. Code-block lines must parse completely; prose and table mentions may
leave out required arguments but must spell every option exactly with a valid choice.
Placeholders are allowed: an all-caps word (``STORE``, ``N``) or
``...`` stands for any valid value, and ``a|b|c`` is checked as each alternative.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from hubert_ecg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:\.\.\.)?|\.\.\.|<[^>]+>|\{[^}]+\})$")
_SHELL_BREAKS = {"|", "||", "&&", ";", ">", ">>", "2>", "<"}


def _logical_lines(block: str) -> list[str]:
    """Join backslash continuations; drop prompts."""
    out, current = [], ""
    for raw in block.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out


def _commands_in(text: str) -> list[tuple[str, str]]:
    """(kind, command): ``block`` = a full command line of a code block, ``inline`` = a mention in prose."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        found += [("block", line) for line in _logical_lines(block) if line.startswith("hubert-ecg ")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`(hubert-ecg [^`\n]+)`", prose)
    # a quoted error message (`hubert-ecg predict: error: ...`) is output, not a command line
    found += [("inline", span.replace("\\|", "|")) for span in spans if not re.match(r"hubert-ecg [\w-]*:", span)]
    return found


def _reference_mapping_options() -> list[str]:
    """`--flag ...` snippets of the `hubert-ecg` column, as full command lines of the mapped command."""
    text = (ROOT / "docs" / "REFERENCE_MAPPING.md").read_text()
    base = {"finetune.py": "hubert-ecg finetune", "test.py": "hubert-ecg evaluate"}
    commands, section, column = [], None, None
    for line in text.splitlines():
        if line.startswith("## "):
            section, column = line[3:].strip(), None
            continue
        if section not in base or not line.startswith("|"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if "`hubert-ecg`" in cells:
            column = cells.index("`hubert-ecg`")
            continue
        if column is None or column >= len(cells) or set(cells[0]) <= set("-: "):
            continue
        for span in re.findall(r"`(--[a-z][^`]*)`", cells[column]):
            commands.append(f"{base[section]} {span.replace(chr(92) + '|', '|')}")
    return commands


def _all_commands() -> list[tuple[str, str, str]]:
    """(source, kind, command) for every documented command line."""
    out = []
    for doc in DOCS:
        out += [(doc.name, kind, cmd) for kind, cmd in _commands_in(doc.read_text())]
    out += [("REFERENCE_MAPPING.md (table)", "inline", cmd) for cmd in _reference_mapping_options()]
    return out


def _subparser(parser, name: str):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices.get(name)


def _inline_error(parser, words: list[str]) -> str | None:
    """A prose mention (``hubert-ecg predict --tta random``) may leave out required arguments, but every
    option it names must be spelled exactly (no abbreviation: argparse refuses ambiguous ones) and a
    literal value of an option with choices must be one of them."""
    while words and words[0] in ("--debug",):  # global options before the command
        words = words[1:]
    if not words or _PLACEHOLDER.match(words[0]):
        return None
    sub = _subparser(parser, words[0])
    if sub is None:
        return f"unknown command {words[0]!r}"
    options = {s: a for a in sub._actions for s in a.option_strings}
    for i, word in enumerate(words[1:], start=1):
        if not word.startswith("--"):
            continue
        flag = word.split("=", 1)[0]
        if flag not in options:
            return f"{words[0]}: no option {flag} (spell options in full)"
        action = options[flag]
        value = word.split("=", 1)[1] if "=" in word else (words[i + 1] if i + 1 < len(words) else None)
        if action.choices and value is not None and not value.startswith("-") and not _PLACEHOLDER.match(value):
            if value not in action.choices:
                return f"{words[0]} {flag}: {value!r} is not one of {sorted(map(str, action.choices))}"
    return None


def _variants(command: str) -> list[list[str]]:
    """Shell words of the command (up to a pipe/redirect/comment), one list per ``a|b`` alternative."""
    command = re.sub(r"\s+#\s.*$", "", command)
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    args = []
    for word in words[1:]:
        if word in _SHELL_BREAKS:
            break
        args.append(word)
    choices = [w.split("|") if "|" in w and not w.startswith("-") and " " not in w else [w] for w in args]
    return [list(v) for v in itertools.product(*choices)]


def _parses(parser, words: list[str]) -> str | None:
    """None when the parser accepts ``words`` (placeholders may take any valid value), else the error."""
    candidates = [words]
    if any(_PLACEHOLDER.match(w) for w in words):
        for value in ("1", "0.5", "auroc"):
            candidates.append([value if _PLACEHOLDER.match(w) else w for w in words])
    errors = []
    for attempt in candidates:
        try:
            parser.parse_args(attempt)
            return None
        except SystemExit as exit_:
            if exit_.code == 0:  # --help / --version
                return None
            errors.append(" ".join(attempt))
    return errors[0]


COMMANDS = _all_commands()


def test_the_docs_show_commands() -> None:
    """The extraction itself works (a broken regex would make every other test vacuous)."""
    names = {cmd.split()[1] for _, kind, cmd in COMMANDS if kind == "block" and len(cmd.split()) > 1}
    assert {"prepare", "finetune", "evaluate", "predict", "pretrain-loop"} <= names
    assert len(COMMANDS) >= 30
    assert any("--head-type" in cmd for _, _, cmd in COMMANDS)  # the table snippets are found


@pytest.mark.parametrize("source,kind,command", COMMANDS, ids=[f"{s}:{c[:60]}" for s, _, c in COMMANDS])
def test_documented_command_parses(source: str, kind: str, command: str, capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    for words in _variants(command):
        if kind == "inline":
            problem = _inline_error(parser, words)
            assert problem is None, f"{source}: `{command}`: {problem}"
            continue
        failed = _parses(parser, words)
        err = capsys.readouterr().err.strip().splitlines()
        assert failed is None, f"{source}: `{command}` is refused by the parser: {err[-1] if err else ''}"


def test_the_check_catches_an_ambiguous_option() -> None:
    """The bug this file exists for: `--head mlp` is ambiguous (--head-type, --head-hidden, ...)."""
    parser = build_parser()
    assert _parses(parser, ["finetune", "STORE", "--init", "CKPT", "--out", "RUN", "--head", "mlp"]) is not None
    assert _parses(parser, ["finetune", "STORE", "--init", "CKPT", "--out", "RUN", "--head-type", "mlp"]) is None
    assert _inline_error(parser, ["finetune", "--head", "mlp"]) is not None
    assert _inline_error(parser, ["finetune", "--head-type", "mlp"]) is None
    assert _inline_error(parser, ["finetune", "--head-type", "transformer"]) is not None
