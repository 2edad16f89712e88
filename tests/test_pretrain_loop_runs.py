"""pretrain-loop run records: another config is refused, --resume takes safe changes, --overwrite starts over."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hubert_ecg.pretraining.loop import run_pretrain_loop
from hubert_ecg.runs import RunSettingsError, read_run
from hubert_ecg.store import ECGStore


def _config(tmp_path: Path, file: str = "loop.yaml", **train: object) -> Path:
    """A one-iteration loop small enough to run in seconds; ``train`` overrides its training settings."""
    settings = {
        "max_steps": 2,
        "batch_size": 4,
        "lr": 1.0e-3,
        "val_every": 2,
        "num_workers": 0,
        "progress": False,
        "logger": "none",
        **train,
    }
    config = {
        "store": "store",
        "out": "loop",
        "size": "tiny",
        "device": "cpu",
        "model": {"num_hidden_layers": 1},
        "iterations": [{"name": "it1", "kmeans": {"k": 4, "n_threads": 1}, "train": settings}],
    }
    path = tmp_path / file
    path.write_text(yaml.safe_dump(config))
    return path


def test_other_settings_are_refused_resume_takes_safe_ones_and_overwrite_moves_the_run_aside(
    make_store, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_store(12, seed=3, root=tmp_path, split_fractions=(0.25, 0.0))  # tmp_path/store: the loop writes targets
    out = tmp_path / "loop"
    run_pretrain_loop(_config(tmp_path))
    assert read_run(out)["kind"] == "pretrain-loop"
    model_file = out / "it1" / "run" / "last" / "model.safetensors"
    mtime = model_file.stat().st_mtime_ns
    assert run_pretrain_loop(_config(tmp_path)) is not None  # the same config: every stage done
    assert model_file.stat().st_mtime_ns == mtime

    other = _config(tmp_path, "other.yaml", lr=2.0e-3)
    with pytest.raises(RunSettingsError, match=r"iterations\.1\.train\.lr 0\.001 -> 0\.002.*--overwrite"):
        run_pretrain_loop(other)
    with pytest.raises(RunSettingsError, match=r"refused: iterations\.1\.train\.lr"):
        run_pretrain_loop(other, resume=True)
    assert model_file.stat().st_mtime_ns == mtime  # refused before anything ran

    # A longer run is a safe change: refused by the iteration's run record without --resume, continued with it.
    longer = _config(tmp_path, "longer.yaml", max_steps=3)
    with pytest.raises(RunSettingsError, match=r"train\.max_steps 2 -> 3"):
        run_pretrain_loop(longer)
    run_pretrain_loop(longer, resume=True)
    assert read_run(out / "it1" / "run")["invocations"][-1]["action"] == "resume"

    capsys.readouterr()
    run_pretrain_loop(other, overwrite=True)
    moved = list(tmp_path.glob("loop.old-*"))
    assert len(moved) == 1 and (moved[0] / "it1" / "run" / "last").is_dir()
    assert (moved[0] / "store-targets" / "it1-k4.npy").exists()  # the old targets went with the old run
    assert f"moved to {moved[0]}" in capsys.readouterr().out
    assert read_run(out)["settings"]["iterations"]["1"]["train"]["lr"] == 2.0e-3
    assert read_run(out / "it1" / "run")["settings"]["train"]["lr"] == 2.0e-3
    assert ECGStore(tmp_path / "store").targets_path("it1-k4").exists()  # made again by the new run


def test_overwrite_and_resume_together_are_a_usage_error(tmp_path: Path) -> None:
    from hubert_ecg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain-loop", str(tmp_path / "loop.yaml"), "--overwrite", "--resume"])
    assert exit_info.value.code == 2
