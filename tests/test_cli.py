"""The command line: every subcommand documents itself; info/convert/export round trips."""

from __future__ import annotations

import json

import pytest
import torch

from hubert_ecg import load_model
from hubert_ecg.cli import build_parser, main
from hubert_ecg.model import create_model

COMMANDS = [
    "info",
    "convert",
    "export",
    "inspect",
    "prepare",
    "datasets",
    "features",
    "cluster",
    "label",
    "pretrain",
    "pretrain-loop",
    "finetune",
    "evaluate",
    "compare",
    "explain",
    "predict",
    "embed",
    "demo",
    "store-export",
    "store-import",
    "config",
]


def test_every_command_is_listed_and_has_help(capsys):
    parser = build_parser()
    top = parser.format_help()
    positions = [
        top.index(f"\n    {name} ") if f"\n    {name} " in top else top.index(f"\n    {name}\n") for name in COMMANDS
    ]
    assert positions == sorted(positions)  # listed in pipeline order, not in module-import order
    for name in COMMANDS:
        assert f"    {name}" in top
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: hubert-ecg " + name) and "(default: None)" not in out


def test_info_json_and_convert_round_trip(tmp_path, capsys):
    model = create_model("tiny", vocab_sizes=[7])
    model.save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == "tiny" and info["codebooks"] == [7] and info["tokens_per_5s_window"] == 93
    assert info["parameters"] == model.num_parameters()
    assert main(["convert", str(tmp_path / "m"), "--out", str(tmp_path / "c"), "--dtype", "bfloat16"]) == 0
    again = load_model(tmp_path / "c")
    x = torch.randn(1, 6000)
    ref = model.eval()(x).last_hidden_state
    # bf16 storage: close to, not equal to, the float32 weights.
    assert (again(x).last_hidden_state - ref).abs().max() < 0.1


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"hubert-ecg: error: {tmp_path / 'missing'}: no such file or directory"


def test_inspect_reports_each_record_and_plots(tmp_path, capsys):
    from hubert_ecg.synthetic import write_synthetic_dataset

    d = write_synthetic_dataset(tmp_path / "d", 2, fmt="wfdb")
    (d / "bad.hea").write_text("bad 12 500\ngarbage\n")
    assert main(["inspect", str(d), "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("2 readable") and ", 1 rejected" in out[-1]
    assert any(line.startswith("REJECT bad: ") for line in out)
    assert any(line.startswith("OK     syn00000: wfdb, 500 Hz, 10.0 s, units mV") for line in out)
    assert (tmp_path / "plots" / "syn00001.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", str(d / "bad.hea")]) == 1


def test_allow_missing_leads_flag(tmp_path, capsys):
    import numpy as np

    from conftest import synthetic_12_lead

    signal = synthetic_12_lead(np.random.default_rng(0), 2500)
    names = ["I", "II", "V1", "V2", "V3", "V4", "V5"]  # limb leads derivable; V6 missing
    rows = signal[[0, 1, 6, 7, 8, 9, 10]].T
    path = tmp_path / "seven.csv"
    path.write_text(",".join(names) + "\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in rows) + "\n")
    assert main(["inspect", str(path), "--fs", "500"]) == 1
    assert "V6" in capsys.readouterr().out
    assert main(["inspect", str(path), "--fs", "500", "--allow-missing-leads"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith("1 readable") and ", 0 rejected" in summary
    assert (
        main(["prepare", str(path), "--fs", "500", "--allow-missing-leads", "--out", str(tmp_path / "s"), "--quiet"])
        == 0
    )
    from hubert_ecg.store import ECGStore

    x = ECGStore(tmp_path / "s").signals([0])[0]
    assert np.all(x[11] == 0) and np.isfinite(x).all()  # V6 zero-filled, the rest preprocessed


# ---------------------------------------------------------------------------------------------
# Help texts, examples, exit codes, templates
# ---------------------------------------------------------------------------------------------
def _subparsers() -> dict:
    import argparse

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def example_commands(text: str) -> list[list[str]]:
    """The ``hubert-ecg ...`` lines of a help epilog or a doc, as argv lists.

    A run of two or more spaces starts the annotation; a shell redirection or pipe ends the command."""
    import re
    import shlex

    commands = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("hubert-ecg "):
            continue
        argv = shlex.split(re.split(r"\s{2,}", line)[0])[1:]
        for i, token in enumerate(argv):
            if token in (">", "|", ">>", "&&", ";"):
                argv = argv[:i]
                break
        commands.append(argv)
    return commands


def test_every_option_of_every_command_has_help():
    import argparse

    missing = [
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, sub in _subparsers().items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []


def test_every_command_help_ends_with_examples_that_parse():
    parser = build_parser()
    for name, sub in _subparsers().items():
        epilog = sub.epilog or ""
        assert epilog.startswith("examples:"), f"{name}: no examples in its --help"
        commands = example_commands(epilog)
        assert any(argv[0] == name for argv in commands), f"{name}: no example of the command itself: {epilog!r}"
        for argv in commands:
            parser.parse_args(argv)  # exits 2 (failing the test) if an example uses a wrong option
        assert sub.format_help().rstrip().endswith(epilog.rstrip().splitlines()[-1].rstrip())
    for argv in example_commands(parser.epilog):
        parser.parse_args(argv)


def test_one_window_vocabulary_and_stride_in_seconds():
    from hubert_ecg.cli.eval_cmds import _stride_in_store_samples

    parser = build_parser()
    evaluate = parser.parse_args(["evaluate", "m", "s", "--out", "o", "--windows", "sliding", "--stride", "2.5"])
    predict = parser.parse_args(["predict", "m", "r/", "--out", "p.csv", "--windows", "sliding", "--stride", "2.5"])
    assert (evaluate.tta, evaluate.stride) == ("sliding", 2.5) and (predict.windows, predict.stride) == ("sliding", 2.5)
    assert parser.parse_args(["evaluate", "m", "s", "--out", "o", "--tta", "random"]).tta == "random"  # old name
    for sub in _subparsers().values():
        for action in sub._actions:
            if "--stride" in action.option_strings:
                assert action.type is not int and "seconds" in action.help
    assert _stride_in_store_samples("no-such-store", 2.5) == 250  # 100 Hz rows
    assert _stride_in_store_samples("no-such-store", None) is None


def test_exit_codes_usage_interrupt_and_handled(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "m", "r", "--out", "p.csv", "--batch-size", "0"])  # out of range: argparse, at parse time
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["info", "--no-such-option"])
    assert exit_.value.code == 2
    capsys.readouterr()

    from hubert_ecg.cli import config_cmds

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(config_cmds, "_cmd_config", interrupted)
    parser = build_parser()
    monkeypatch.setattr("hubert_ecg.cli.build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["config"].set_defaults(handler=interrupted)
    assert main(["config", "finetune"]) == 130
    assert capsys.readouterr().err == "hubert-ecg: interrupted\n"


def test_a_closed_pipe_exits_quietly():
    """`hubert-ecg ... | head`: the reader goes away; no traceback, status 0."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "hubert_ecg.cli", "config", "pretrain-loop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the command has printed anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""
    shell = subprocess.run(
        f"set -o pipefail; {sys.executable} -m hubert_ecg.cli config --list | head -1",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0 and shell.stdout == "templates:\n" and shell.stderr == ""


def test_templates_ship_in_the_package_and_validate(tmp_path, capsys):
    import yaml

    from hubert_ecg.pretraining.loop import load_config
    from hubert_ecg.recipes import load_recipe

    assert main(["config", "pretrain-loop"]) == 0
    loop = tmp_path / "loop.yaml"
    loop.write_text(capsys.readouterr().out)
    config = load_config(loop)  # the loop's own validator accepts the template
    assert config["store"] == str((tmp_path / "runs" / "store").resolve())
    repo_copy = (
        yaml.safe_load(open("configs/pretrain-loop.yaml"))
        if __import__("os").path.exists("configs/pretrain-loop.yaml")
        else None
    )
    if repo_copy is not None:  # the repository's example and the shipped template describe the same loop
        assert repo_copy["iterations"] == yaml.safe_load(loop.read_text())["iterations"]
    assert main(["config", "finetune", "--out", str(tmp_path / "recipe.yaml")]) == 0
    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert recipe["task"] == "multi_label" and recipe["layer_decay"] == 0.8
    assert main(["config", "finetune", "--out", str(tmp_path / "recipe.yaml")]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["config", "ptbxl-superdiag"]) == 0
    assert load_recipe("ptbxl-superdiag")["max_steps"] == yaml.safe_load(capsys.readouterr().out)["max_steps"]
    assert main(["config", "nope"]) == 1
    assert capsys.readouterr().err.startswith("hubert-ecg: error: no template or recipe named 'nope' (templates: ")
    from pathlib import Path

    text = Path("pyproject.toml").read_text() if Path("pyproject.toml").exists() else "templates/*.yaml"
    assert "templates/*.yaml" in text  # package data: a wheel user gets the templates


def test_help_does_not_load_pytorch():
    """`hubert-ecg --help` and every `COMMAND --help` answer at once: the parser imports no torch."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom hubert_ecg.cli import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
