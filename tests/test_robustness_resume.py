"""Interrupted jobs: ``prepare``, ``features``, ``label`` and ``finetune`` killed with SIGKILL at a
random point and re-run with the same command finish with the same outputs as an uninterrupted run,
bitwise (CPU, deterministic mode). ``pretrain`` is covered by tests/test_training.py.

The killed jobs run the real command line in a child process. To give the kill a window that does
not depend on machine speed, the child slows one inner function down (a sleep before each shard or
block) and may shrink a default (feature shard size, which has no CLI flag), through environment
variables read by ``CHILD`` below; nothing else differs from ``python -m hubert_ecg``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.cli import main
from hubert_ecg.synthetic import write_synthetic_dataset

# SLOW="module:attr.path:seconds" sleeps before every call; DEFAULTS="module:function:name=int" changes a
# keyword default. Then the normal CLI runs.
CHILD = r"""
import functools, importlib, os, sys, time
for spec in filter(None, os.environ.get("SLOW", "").split(";")):
    module, path, seconds = spec.split(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    def slow(*a, _real=real, _s=float(seconds), **k):
        time.sleep(_s)
        return _real(*a, **k)
    setattr(owner, name, slow)
for spec in filter(None, os.environ.get("DEFAULTS", "").split(";")):
    module, func, assignment = spec.split(":")
    key, value = assignment.split("=")
    getattr(importlib.import_module(module), func).__kwdefaults__[key] = int(value)
from hubert_ecg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def run_cli(*args: object, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, args)], env=_env(**env), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def kill_when(args: list[object], ready: Callable[[], bool], max_delay_s: float, **env: str) -> float:
    """Start the command, wait until ``ready()``, wait a random 0..max_delay_s more, SIGKILL it.

    Returns the delay used (printed by pytest on failure, to reproduce)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        env=_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the job never reached the kill point")
        time.sleep(0.01)
    delay = float(np.random.default_rng().uniform(0, max_delay_s))
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the job finished before the kill"
    return delay


def same_files(a: Path, b: Path, pattern: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of ``pattern`` files in ``a``; asserts ``b`` has the same names with the same bytes."""
    names = sorted(p.relative_to(a).as_posix() for p in a.glob(pattern) if p.is_file() and p.name not in skip)
    assert names == sorted(p.relative_to(b).as_posix() for p in b.glob(pattern) if p.is_file() and p.name not in skip)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


def quiet_main(*args: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("rec"), 16, fmt="wfdb", seed=11, seconds=5.0)


@pytest.fixture(scope="module")
def labelled_store(records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store") / "s"
    quiet_main(
        "prepare",
        records,
        "--out",
        store,
        "--labels",
        records / "labels.csv",
        "--id-column",
        "record_id",
        "--label-start-index",
        2,
        "--split-column",
        "split",
        "--quiet",
    )
    return store


def test_prepare_killed_and_rerun_gives_an_identical_store(records: Path, tmp_path: Path) -> None:
    args = ["prepare", records, "--shard-records", 3, "--quiet"]
    quiet_main(*args, "--out", tmp_path / "ref")
    store = tmp_path / "killed"
    kill_when(
        [*args, "--out", store],
        lambda: (store / "shards" / "00000.csv").exists(),
        0.6,
        SLOW="hubert_ecg.store:_write_shard:0.25",
    )
    assert json.loads((store / "store.json").read_text())["complete"] is False
    assert not (store / "manifest.csv").exists()
    proc = run_cli(*args, "--out", store)
    assert "16 records" in proc.stdout and "already done" in proc.stdout
    # skipped.csv: labels.csv among the records is listed as not an ECG record
    assert same_files(tmp_path / "ref", store, "*.csv") == ["manifest.csv", "rejects.csv", "skipped.csv"]
    assert len(same_files(tmp_path / "ref", store, "shards/*")) == 6 * 4  # .npy, .csv, .rejects.csv, .sources.csv
    assert (tmp_path / "ref" / "store.json").read_text() == (store / "store.json").read_text()
    assert not list(store.rglob("*.tmp"))


def test_features_killed_and_rerun_gives_identical_shards(labelled_store: Path, tmp_path: Path) -> None:
    import hubert_ecg.pretraining.targets as targets

    args = ["features", labelled_store, "--kind", "tf", "--batch-size", 2, "--quiet", "--device", "cpu"]
    real_default = targets.dump_features.__kwdefaults__["shard_rows"]
    targets.dump_features.__kwdefaults__["shard_rows"] = 2  # same setting as the child's
    try:
        quiet_main(*args, "--out", tmp_path / "ref")
    finally:
        targets.dump_features.__kwdefaults__["shard_rows"] = real_default
    out = tmp_path / "killed"
    env = dict(
        SLOW="hubert_ecg.pretraining.targets:_FeatureComputer.batch:0.15",
        DEFAULTS="hubert_ecg.pretraining.targets:dump_features:shard_rows=2",
    )
    kill_when([*args, "--out", out], lambda: (out / "features-r0-00000.npy").exists(), 0.8, **env)
    assert not (out / "features.json").exists()
    run_cli(*args, "--out", out, DEFAULTS=env["DEFAULTS"])
    assert not list(out.glob(".*.tmp"))  # what the kill cut short was cleaned up
    # run.json records the command line and times of the run that wrote it: it differs by design
    names = same_files(tmp_path / "ref", out, "*", skip=("run.json",))
    assert len([n for n in names if n.endswith(".valid.npy")]) == 8  # 16 rows in shards of 2
    assert json.loads((out / "features.json").read_text())["complete"] is True


def test_label_killed_and_rerun_gives_identical_targets(labelled_store: Path, tmp_path: Path) -> None:
    features, kmeans = tmp_path / "features", tmp_path / "km"
    quiet_main("features", labelled_store, "--kind", "tf", "--out", features, "--quiet", "--device", "cpu")
    quiet_main("cluster", features, "--k", 4, "--out", kmeans, "--held-out", 0)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    for copy in (ref, killed):
        shutil.copytree(labelled_store, copy)
    args = ["--kmeans", kmeans / "k4", "--name", "t", "--batch-size", 2, "--quiet", "--device", "cpu"]
    quiet_main("label", ref, *args)
    kill_when(
        ["label", killed, *args],
        lambda: (killed / "targets" / "t.progress-r0.json").exists(),
        0.8,
        SLOW="hubert_ecg.pretraining.targets:_FeatureComputer.batch:0.15",
    )
    assert not (killed / "targets" / "t.npy").exists()
    assert (killed / "targets" / "t.npy.partial").exists()
    run_cli("label", killed, *args)
    assert (ref / "targets" / "t.npy").read_bytes() == (killed / "targets" / "t.npy").read_bytes()
    info_ref, info_killed = (json.loads((d / "targets" / "t.json").read_text()) for d in (ref, killed))
    assert {k: v for k, v in info_ref.items() if k != "store"} == {k: v for k, v in info_killed.items() if k != "store"}
    # no partial/progress file left; t.run.json is the run's provenance record
    assert sorted(p.name for p in (killed / "targets").iterdir()) == ["t.json", "t.npy", "t.run.json"]


@pytest.mark.slow
def test_finetune_killed_and_rerun_gives_identical_weights(labelled_store: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    args = [
        "finetune",
        labelled_store,
        "--random-init",
        "--size",
        "tiny",
        "--max-steps",
        12,
        "--batch-size",
        4,
        "--val-every",
        4,
        "--workers",
        0,
        "--deterministic",
        "--logger",
        "none",
        "--quiet",
        "--device",
        "cpu",
        "--patience",
        100,
    ]
    run_cli(*args, "--out", tmp_path / "ref")
    run = tmp_path / "killed"
    state = run / "last" / "trainer_state.json"

    def past_first_checkpoint() -> bool:
        try:
            return json.loads(state.read_text())["step"] >= 4
        except (OSError, ValueError, KeyError):
            return False

    kill_when(
        [*args, "--out", run],
        past_first_checkpoint,
        1.0,
        SLOW="hubert_ecg.finetune:FinetuneObjective.training_loss:0.1",
    )
    assert json.loads(state.read_text())["step"] < 12
    run_cli(*args, "--out", run)
    for name in ("last", "best"):
        a = load_file(str(tmp_path / "ref" / name / "model.safetensors"))
        b = load_file(str(run / name / "model.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert bool((a[key] == b[key]).all()), (name, key)
        from hubert_ecg.checkpoint import load_model

        thresholds = [load_model(d / name).info.thresholds for d in (tmp_path / "ref", run)]
        assert thresholds[0] == thresholds[1]
    assert json.loads(state.read_text())["step"] == 12
