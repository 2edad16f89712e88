"""MkDocs hooks for the documentation site (``mkdocs.yml``: ``hooks: [tools/docs_hooks.py]``).

* ``<!-- cli-reference -->`` in a page is replaced by the reference of every ``hubert-ecg`` command,
  generated from the real parser (:func:`cli_reference_markdown`), so the page cannot drift from
  ``--help``.
* Links from a docs page to files outside ``docs/`` (``../benchmarks/RESULTS.md``) cannot be served by
  the site; they become plain code spans naming the file in the repository, so that ``--strict`` keeps
  failing on links that are really broken.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cli-reference -->"
_OUTSIDE_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s]+)\)")


def _parser() -> argparse.ArgumentParser:
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from hubert_ecg.cli import build_parser

    return build_parser()


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _option_row(action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or (
                ("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper()
            )
            name += f" {metavar}"
    else:
        name = action.metavar or action.dest
    help_ = (action.help or "") % {"default": action.default} if action.help else ""
    shown_default = (
        action.default not in (None, False, argparse.SUPPRESS)
        and action.option_strings
        and "default" not in help_
        and not isinstance(action.default, bool)
    )
    if shown_default:
        help_ += f" (default: {action.default})"
    code = html.escape(name, quote=False).replace("|", "&#124;")  # a pipe would split the table cell
    return f"| <code>{code}</code> | {_cell(help_)} |"


def cli_reference_markdown() -> str:
    """Markdown for every command: description, usage, a table of arguments and options, examples."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "All commands share `--debug` (full tracebacks) and exit with 0 (success), 1 (a handled error, "
        "one line on stderr), 2 (a usage error) or 130 (interrupted).",
        "",
    ]
    lines += ["| command | what it does |", "|---|---|"]
    for choice in sub._choices_actions:
        lines.append(f"| [`{choice.dest}`](#{choice.dest}) | {_cell(choice.help or '')} |")
    for name, command in sub.choices.items():
        usage = command.format_usage().strip()
        if usage.startswith("usage: "):
            usage = usage[len("usage: ") :]
        lines += [
            "",
            f"## {name}",
            "",
            _cell(command.description or ""),
            "",
            "```text",
            usage,
            "```",
            "",
            "| argument | meaning |",
            "|---|---|",
        ]
        lines += [_option_row(a) for a in command._actions if not isinstance(a, argparse._HelpAction)]
        if command.epilog:
            lines += ["", "```bash"]
            for line in command.epilog.splitlines()[1:]:
                if line.strip().startswith("hubert-ecg "):
                    parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)  # command, then its note
                    lines.append(parts[0] + (f"   # {parts[1]}" if len(parts) > 1 else ""))
                elif line.strip():
                    lines.append(f"# {line.strip()}")
            lines.append("```")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # noqa: ARG001  (MkDocs hook)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference_markdown())
    return _OUTSIDE_LINK.sub(
        lambda m: (
            f"{m.group(1)} (`{m.group(2)[3:]}` in the repository)"
            if not m.group(1).startswith("`")
            else f"{m.group(1)} (in the repository)"
        ),
        markdown,
    )
