"""The command line: every subcommand documents itself; info/convert/export round trips."""

from __future__ import annotations

import json

import pytest
import torch

from hubert_ecg import load_model
from hubert_ecg.cli import build_parser, main
from hubert_ecg.model import create_model

COMMANDS = ["info", "convert", "export", "inspect", "prepare", "datasets", "features", "cluster", "label", "pretrain",
            "pretrain-loop", "finetune", "evaluate", "predict", "embed", "demo"]


def test_every_command_is_listed_and_has_help(capsys):
    parser = build_parser()
    top = parser.format_help()
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
    assert out[-1] == "2 readable, 1 rejected"
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
    assert "1 readable, 0 rejected" in capsys.readouterr().out
    assert main(["prepare", str(path), "--fs", "500", "--allow-missing-leads", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    from hubert_ecg.store import ECGStore
    x = ECGStore(tmp_path / "s").signals([0])[0]
    assert np.all(x[11] == 0) and np.isfinite(x).all()  # V6 zero-filled, the rest preprocessed
