"""The whole loop on a tiny model and tiny data: two iterations, resumable, loss goes down."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hubert_ecg.pretraining.loop import load_config, run_pretrain_loop
from hubert_ecg.store import ECGStore


def test_two_iterations_end_to_end(make_store, tmp_path):
    make_store(24, seed=4, root=tmp_path, split_fractions=(0.2, 0.0))  # tmp_path/store: the loop writes targets
    train = {
        "max_steps": 16,
        "batch_size": 8,
        "lr": 3.0e-3,
        "val_every": 8,
        "num_workers": 0,
        "progress": False,
        "log_every": 2,
        "warmup_fraction": 0.1,
    }
    config = {
        "store": "store",
        "out": "loop",
        "size": "tiny",
        "device": "cpu",
        "iterations": [
            {"name": "it1", "features": {"kind": "tf+mfcc"}, "kmeans": {"k": 8}, "train": train},
            {
                "name": "it2",
                "features": {"kind": "hidden", "layer": 1},
                "kmeans": {"k": 12},
                "train": {**train, "max_steps": 6},
            },
        ],
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    final = run_pretrain_loop(path)
    assert final == tmp_path / "loop" / "it2" / "run" / "best"
    store = ECGStore(tmp_path / "store")
    assert np.asarray(store.targets("it1-k8")).max() < 8 and np.asarray(store.targets("it2-k12")).max() < 12
    history_path = tmp_path / "loop" / "it1" / "run" / "history.jsonl"
    history = [json.loads(line) for line in history_path.read_text().splitlines()]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    from hubert_ecg import load_model

    it2 = load_model(final)
    assert it2.config.vocab_sizes == (12,)
    # Re-running finds every stage done and changes nothing.
    mtime = (tmp_path / "loop" / "it2" / "run" / "last" / "model.safetensors").stat().st_mtime_ns
    assert run_pretrain_loop(path) == final
    assert (tmp_path / "loop" / "it2" / "run" / "last" / "model.safetensors").stat().st_mtime_ns == mtime


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"store": "s", "out": "o", "iterations": [{"nme": "x"}]}))
    with pytest.raises(ValueError, match="iteration 1 has unknown keys nme"):
        load_config(path)
    path.write_text(yaml.safe_dump({"store": "s", "iterations": []}))
    with pytest.raises(ValueError, match="missing 'out'"):
        load_config(path)


def test_shipped_example_config_parses():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "pretrain-loop.yaml")
    assert [it["name"] for it in config["iterations"]] == ["it1", "it2"]
