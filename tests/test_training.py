"""The shared training loop: loss goes down, exact resume after SIGKILL, DDP (Gloo) equals one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hubert_ecg.store import ECGStore, prepare_store
from hubert_ecg.synthetic import write_synthetic_dataset

SCRIPT = Path(__file__).with_name("train_script.py")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    d = write_synthetic_dataset(tmp_path_factory.mktemp("syn"), 28, fmt="npy", seed=2, seconds=5.0)
    out = tmp_path_factory.mktemp("store") / "s"
    prepare_store([d], out, read_kwargs={"fs": 500.0}, progress=False)
    store = ECGStore(out)
    x = store.signals(store.rows())[:, :, :500].reshape(len(store), -1)
    spans = np.stack([x[:, 64 * t:64 * t + 82].std(1) for t in range(93)], 1)
    targets = np.digitize(spans, np.quantile(spans, [0.25, 0.5, 0.75])).astype(np.int16)
    (out / "targets").mkdir()
    np.save(out / "targets" / "fake.npy", targets)
    return str(out)


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _history(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "history.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            out[rec["step"]] = rec["train/loss"]
    return out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def test_loss_goes_down_and_checkpoints_are_kept(store_path, tmp_path):
    proc = _run([str(SCRIPT), store_path, str(tmp_path / "run"), "30"])
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()[-2000:]
    hist = _history(tmp_path / "run")
    first, last = np.mean([hist[s] for s in range(1, 6)]), np.mean([hist[s] for s in range(26, 31)])
    assert last < first * 0.9
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["best", "last", "tensorboard"]
    assert (tmp_path / "run" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigkill_and_rerun_resumes_to_identical_weights(store_path, tmp_path):
    steps = 24
    ref = _run([str(SCRIPT), store_path, str(tmp_path / "ref"), str(steps), "4"])
    assert ref.wait(timeout=300) == 0
    run = tmp_path / "killed"
    proc = _run([str(SCRIPT), store_path, str(run), str(steps), "4"])
    state = run / "last" / "trainer_state.json"
    deadline = time.time() + 240
    rng = np.random.default_rng()
    kill_after = int(rng.integers(8, 17))
    while time.time() < deadline:
        if state.exists():
            try:
                if json.loads(state.read_text())["step"] >= kill_after:
                    break
            except (json.JSONDecodeError, KeyError, FileNotFoundError):
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at < steps, "the job finished before it could be killed"
    again = _run([str(SCRIPT), store_path, str(run), str(steps), "4"])
    assert again.wait(timeout=300) == 0, again.stdout.read().decode()[-2000:]
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads(state.read_text())["step"] == steps


def test_corrupt_last_checkpoint_falls_back_to_previous(store_path, tmp_path):
    from hubert_ecg.training import load_training_checkpoint
    run = tmp_path / "run"
    assert _run([str(SCRIPT), store_path, str(run), "8", "4"]).wait(timeout=300) == 0
    weights = run / "last" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="ignoring corrupt checkpoint .*last"):
        directory, _, state = load_training_checkpoint(run)
    assert directory.name == "previous" and state.step == 4


def test_two_gloo_processes_match_one_process(store_path, tmp_path):
    one = _run([str(SCRIPT), store_path, str(tmp_path / "one"), "6"])
    assert one.wait(timeout=300) == 0
    two = _run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000),
                str(SCRIPT), store_path, str(tmp_path / "two"), "6"])
    out = two.communicate(timeout=300)[0].decode()
    assert two.returncode == 0, out[-3000:]
    h1, h2 = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert sorted(h1) == sorted(h2) == list(range(1, 7))
    # Same global batches and masks; only float summation order differs between 1 and 2 processes.
    np.testing.assert_allclose([h2[s] for s in h1], [h1[s] for s in h1], rtol=1e-4, atol=1e-5)


FINETUNE_SCRIPT = Path(__file__).with_name("finetune_script.py")


@pytest.fixture(scope="module")
def labelled_store_path(tmp_path_factory) -> str:
    from hubert_ecg.store import LabelTable
    from hubert_ecg.synthetic import SYNTHETIC_LABELS

    d = write_synthetic_dataset(tmp_path_factory.mktemp("lab"), 24, fmt="npy", seed=5, seconds=5.0)
    labels = LabelTable.from_csv(d / "labels.csv", id_column="record_id", split_column="split",
                                 label_columns=list(SYNTHETIC_LABELS[:3]))
    out = tmp_path_factory.mktemp("lstore") / "s"
    prepare_store([d], out, labels=labels, read_kwargs={"fs": 500.0}, progress=False)
    return str(out)


def test_two_gloo_processes_finetune_like_one_process(labelled_store_path, tmp_path):
    """DDP fine-tuning (linear probe, then all blocks): runs past step 2 (masked_spec_embed and other
    parameters without gradients are frozen), writes one history line per step, equals one process."""
    one = _run([str(FINETUNE_SCRIPT), labelled_store_path, str(tmp_path / "one"), "4", "2"])
    out1 = one.communicate(timeout=300)[0].decode()
    assert one.returncode == 0, out1[-3000:]
    two = _run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(30500 + os.getpid() % 1000), str(FINETUNE_SCRIPT), labelled_store_path, str(tmp_path / "two"),
                "4", "2"])
    out = two.communicate(timeout=300)[0].decode()
    assert two.returncode == 0, out[-3000:]
    for stage in ("linear-probe", ""):
        h1, h2 = _history(tmp_path / "one" / stage), _history(tmp_path / "two" / stage)
        steps = [json.loads(line)["step"] for line in (tmp_path / "two" / stage / "history.jsonl").read_text()
                 .splitlines() if "train/loss" in line]
        assert steps == list(range(1, (2 if stage else 4) + 1))  # one line per step, from rank 0 only
        np.testing.assert_allclose([h2[s] for s in sorted(h1)], [h1[s] for s in sorted(h1)], rtol=1e-4, atol=1e-5)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)  # Adam magnifies summation order


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_train_on_cpu(store_path, tmp_path, precision):
    """The autocast / GradScaler code that runs on GPUs, exercised through CPU autocast."""
    from hubert_ecg.model import create_model
    from hubert_ecg.pretraining.objective import PretrainObjective
    from hubert_ecg.training import TrainConfig, train

    torch.manual_seed(0)
    model = create_model("tiny", vocab_sizes=[4])
    store = ECGStore(store_path)
    rows = store.rows()
    objective = PretrainObjective(model, store, ["fake"], rows[:-4], rows[-4:], global_batch=8)
    cfg = TrainConfig(out_dir=str(tmp_path / precision), max_steps=4, batch_size=8, lr=1e-3, val_every=2,
                      log_every=1, num_workers=0, progress=False, precision=precision, clip_grad_norm=1.0)
    result = train(model, objective, cfg)
    assert result.state.step == 4 and np.isfinite(result.state.best)
    hist = _history(tmp_path / precision)
    assert all(np.isfinite(v) for v in hist.values())
    state = torch.load(tmp_path / precision / "last" / "trainer_state.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "fp16")


def _masks_by_row(store_path: str, out: Path, batch_size: int, grad_accum: int, steps: int = 2) -> dict:
    """Run the real loop and record, per optimizer step, the span mask each store row received."""
    from hubert_ecg.model import create_model
    from hubert_ecg.pretraining.objective import PretrainObjective
    from hubert_ecg.training import TrainConfig, train

    torch.manual_seed(0)
    model = create_model("tiny", vocab_sizes=[4])
    store = ECGStore(store_path)
    rows = store.rows()
    objective = PretrainObjective(model, store, ["fake"], rows[:-4], rows[-4:], global_batch=batch_size)
    seen: dict = {}
    real = objective._forward

    def record(module, batch, key, offset, global_batch):
        mask = objective._masks(batch, key, offset, global_batch, None, batch["input"].device)
        for r, m in zip(batch["rows"].tolist(), mask):
            seen.setdefault(key, {})[r] = m.clone()
        return real(module, batch, key, offset, global_batch)
    objective._forward = record
    cfg = TrainConfig(out_dir=str(out), max_steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=1e-3,
                      val_every=100, num_workers=0, progress=False, logger="none")
    train(model, objective, cfg)
    return {k: v for k, v in seen.items() if k < 10**9}  # training steps only (validation keys are 1e9 + i)


def test_masks_differ_per_micro_batch_and_do_not_depend_on_the_accumulation_split(store_path, tmp_path):
    one = _masks_by_row(store_path, tmp_path / "a1", batch_size=8, grad_accum=1)
    two = _masks_by_row(store_path, tmp_path / "a2", batch_size=4, grad_accum=2)
    assert sorted(one) == sorted(two) == [0, 1]
    for step in one:
        assert one[step].keys() == two[step].keys() and len(one[step]) == 8  # the same 8 rows per step
        for row in one[step]:
            assert torch.equal(one[step][row], two[step][row]), (step, row)
        # The two micro-batches of a step do not share one mask pattern (the bug: keyed by step only).
        masks = torch.stack([two[step][r] for r in sorted(two[step])])
        assert len({tuple(m.tolist()) for m in masks}) == 8
