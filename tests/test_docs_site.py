"""The documentation site: its CLI reference is generated from the parser and covers every option;
the pages the nav names exist; CITATION.cff and LICENSE say what they must."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from hubert_ecg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_has_every_command_and_option():
    text = _hooks().cli_reference_markdown()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            shown = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            assert f"<code>{shown}" in section, f"{name}: {shown} missing from the CLI reference"
        assert "```bash\nhubert-ecg " in section, f"{name}: no examples"
    assert "(default: None)" not in text


def test_outside_links_become_repository_paths_and_the_marker_is_replaced():
    hooks = _hooks()
    page = "See [results](../benchmarks/RESULTS.md) and [the API](python-api.md).\n<!-- cli-reference -->"
    out = hooks.on_page_markdown(page, None, None, None)
    assert "results (`benchmarks/RESULTS.md` in the repository)" in out
    assert "[the API](python-api.md)" in out  # links inside the site stay links (and are checked by --strict)
    assert "<!-- cli-reference -->" not in out and "## predict" in out


def test_every_nav_page_exists_and_the_guides_are_there():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    pages = []

    def walk(items):
        for item in items:
            for value in item.values():
                walk(value) if isinstance(value, list) else pages.append(value)

    walk(config["nav"])
    assert all((ROOT / "docs" / page).is_file() for page in pages), pages
    for page in (
        "getting-started.md",
        "hospital-exports.md",
        "finetune-ptbxl.md",
        "pretrain.md",
        "cli.md",
        "python-api.md",
        "file-formats.md",
        "RELIABILITY.md",
    ):
        assert page in pages
    assert config["strict"] is True
    api = (ROOT / "docs" / "python-api.md").read_text()
    for target in re.findall(r"^::: ([\w.]+)$", api, flags=re.M):  # mkdocstrings targets must import
        module, _, name = target.rpartition(".")
        try:
            imported = importlib.import_module(target)
        except ImportError:
            imported = getattr(importlib.import_module(module), name)
        assert imported is not None


def test_citation_and_licence():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["doi"] == "10.1101/2024.11.14.24317328" and paper["authors"][0]["family-names"] == "Coppola"
    import hubert_ecg

    assert str(citation["version"]) == hubert_ecg.__version__
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence and len(licence.splitlines()) > 190
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    """The site builds with warnings as errors (what `make docs` and CI run)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
