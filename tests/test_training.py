"""The shared training loop: loss goes down, exact resume after SIGKILL, DDP (Gloo) equals one process."""

from __future__ import annotations

import contextlib
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

from hubert_ecg.store import ECGStore

SCRIPT = Path(__file__).with_name("train_script.py")


@pytest.fixture(scope="module")
def store_path(make_store, tmp_path_factory) -> str:
    out = make_store(28, seed=2, root=tmp_path_factory.mktemp("train"))  # its own root: targets are added below
    store = ECGStore(out)
    x = store.signals(store.rows())[:, :, :500].reshape(len(store), -1)
    spans = np.stack([x[:, 64 * t : 64 * t + 82].std(1) for t in range(93)], 1)
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


def _history_lines(run: Path) -> list[tuple[int, float]]:
    """(step, train/loss) in the order the lines were written (both runs of a resumed job)."""
    records = map(json.loads, (run / "history.jsonl").read_text().splitlines())
    return [(rec["step"], rec["train/loss"]) for rec in records if "train/loss" in rec]


def test_sigkill_and_rerun_resumes_to_identical_weights(store_path, tmp_path):
    """Dropout ON: identical weights need the RNG restored, not only the weights and the data position."""
    steps = 24
    ref = _run([str(SCRIPT), store_path, str(tmp_path / "ref"), str(steps), "4", "0.1"])
    assert ref.wait(timeout=300) == 0
    run = tmp_path / "killed"
    proc = _run([str(SCRIPT), store_path, str(run), str(steps), "4", "0.1"])
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
    again = _run([str(SCRIPT), store_path, str(run), str(steps), "4", "0.1"])
    assert again.wait(timeout=300) == 0, again.stdout.read().decode()[-2000:]
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads(state.read_text())["step"] == steps
    # The history shows no restart: the re-run continues after the saved step (a step logged after the
    # checkpoint by the killed run may appear twice), and every step's loss equals the uninterrupted
    # run's -- the same batches (data position) with the same dropout masks (RNG state).
    lines, reference = _history_lines(run), dict(_history_lines(tmp_path / "ref"))
    drops = [i for i in range(1, len(lines)) if lines[i][0] <= lines[i - 1][0]]
    assert len(drops) <= 1
    if drops:
        assert lines[drops[0]][0] == killed_at + 1
    assert lines[0][0] == 1 and lines[-1][0] == steps and {s for s, _ in lines} == set(range(1, steps + 1))
    for step, loss in lines:
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


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


def _rows_log(path: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        step, *rows = map(int, line.split())
        out.setdefault(step, []).extend(rows)
    return out


def test_two_gloo_processes_match_one_process(store_path, tmp_path):
    env_log = {"ROWS_LOG": "1"}
    one = subprocess.Popen(
        [sys.executable, str(SCRIPT), store_path, str(tmp_path / "one"), "6"],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env_log},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert one.wait(timeout=300) == 0
    two = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(29500 + os.getpid() % 1000),
            str(SCRIPT),
            store_path,
            str(tmp_path / "two"),
            "6",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env_log},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = two.communicate(timeout=300)[0].decode()
    assert two.returncode == 0, out[-3000:]
    # Each rank trained on its own half of every global batch; together, the one-process batch.
    single, r0, r1 = (_rows_log(tmp_path / d / f"rows-r{r}.txt") for d, r in (("one", 0), ("two", 0), ("two", 1)))
    assert sorted(single) == sorted(r0) == sorted(r1) == list(range(6))
    for step in single:
        assert len(single[step]) == 8 and len(r0[step]) == len(r1[step]) == 4
        assert r0[step] + r1[step] == single[step]
    # One history (rank 0 writes it), one line per step.
    assert [s for s, _ in _history_lines(tmp_path / "two")] == list(range(1, 7))
    assert not list((tmp_path / "two").glob("history*r1*"))
    h1, h2 = _history(tmp_path / "one"), _history(tmp_path / "two")
    assert sorted(h1) == sorted(h2) == list(range(1, 7))
    # Same global batches and masks; only float summation order differs between 1 and 2 processes.
    np.testing.assert_allclose([h2[s] for s in h1], [h1[s] for s in h1], rtol=1e-4, atol=1e-5)


FINETUNE_SCRIPT = Path(__file__).with_name("finetune_script.py")


@pytest.fixture(scope="module")
def labelled_store_path(make_store) -> str:
    from hubert_ecg.synthetic import SYNTHETIC_LABELS

    return str(make_store(24, seed=5, labels=SYNTHETIC_LABELS[:3]))


def test_two_gloo_processes_finetune_like_one_process(labelled_store_path, tmp_path):
    """DDP fine-tuning (linear probe, then all blocks): runs past step 2 (masked_spec_embed and other
    parameters without gradients are frozen), writes one history line per step, equals one process."""
    one = _run([str(FINETUNE_SCRIPT), labelled_store_path, str(tmp_path / "one"), "4", "2"])
    out1 = one.communicate(timeout=300)[0].decode()
    assert one.returncode == 0, out1[-3000:]
    two = _run(
        [
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(30500 + os.getpid() % 1000),
            str(FINETUNE_SCRIPT),
            labelled_store_path,
            str(tmp_path / "two"),
            "4",
            "2",
        ]
    )
    out = two.communicate(timeout=300)[0].decode()
    assert two.returncode == 0, out[-3000:]
    for stage in ("linear-probe", ""):
        h1, h2 = _history(tmp_path / "one" / stage), _history(tmp_path / "two" / stage)
        steps = [
            json.loads(line)["step"]
            for line in (tmp_path / "two" / stage / "history.jsonl").read_text().splitlines()
            if "train/loss" in line
        ]
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
    cfg = TrainConfig(
        out_dir=str(tmp_path / precision),
        max_steps=4,
        batch_size=8,
        lr=1e-3,
        val_every=2,
        log_every=1,
        num_workers=0,
        progress=False,
        precision=precision,
        clip_grad_norm=1.0,
    )
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
    cfg = TrainConfig(
        out_dir=str(out),
        max_steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=1e-3,
        val_every=100,
        num_workers=0,
        progress=False,
        logger="none",
    )
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


class _ScriptedValidation:
    """An objective whose validation returns a scripted metric sequence (the loop's side is what is tested)."""

    def __init__(self, values):
        self.values = list(values)

    def validate(self, model, device, autocast):
        return {"val_loss": self.values.pop(0)}


def test_early_stopping_fires_after_patience_rounds_and_best_is_the_best(tmp_path):
    from safetensors.torch import load_file

    from hubert_ecg.distributed import DistEnv
    from hubert_ecg.model import create_model
    from hubert_ecg.training import RunLogger, TrainConfig, TrainState, _validate_and_checkpoint

    values = [0.5, 0.4, 0.45, 0.41, 0.39, 0.6, 0.39, 0.7]  # min mode, patience 3, min_delta 0.005
    cfg = TrainConfig(out_dir=str(tmp_path), patience=3, monitor="val_loss", monitor_mode="min", min_delta=0.005)
    objective, state, logger = _ScriptedValidation(values), TrainState(), RunLogger(tmp_path, "none", {}, True)
    model = create_model("tiny")
    stops = []
    for round_, value in enumerate(values, start=1):
        state.step = 10 * round_
        with torch.no_grad():
            model.encoder.layer_norm.bias.fill_(value)  # marks the weights of this round
        stops.append(
            _validate_and_checkpoint(
                model, objective, cfg, state, torch.device("cpu"), contextlib.nullcontext, logger, DistEnv()
            )
        )
        if stops[-1]:
            break
    # improvements: 0.5 (r1), 0.4 (r2), 0.39 (r5: 0.4 - 0.39 > 0.005); 0.41 and 0.45 are not; then 0.6, 0.39 (not
    # better than 0.39 by min_delta), 0.7 -> the third round without improvement after r5 stops at r8.
    assert stops == [False] * 7 + [True]
    assert state.stopped_early and state.best == pytest.approx(0.39) and state.best_step == 50
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["step"] == 50
    saved = load_file(str(tmp_path / "best" / "model.safetensors"))["encoder.layer_norm.bias"]
    assert torch.allclose(saved, torch.full_like(saved, 0.39))


def test_thresholds_are_tuned_on_validation_rows_only_with_the_highest_threshold_on_ties(tmp_path):
    from hubert_ecg.checkpoint import load_model, save_pretrained
    from hubert_ecg.config import HeadConfig
    from hubert_ecg.evaluate import Scores
    from hubert_ecg.finetune import FinetuneObjective, FinetuneOptions, tune_and_store_thresholds
    from hubert_ecg.model import create_model

    model = create_model("tiny", head=HeadConfig(num_labels=1))
    model.info.task, model.info.label_names = "binary", ["x"]
    save_pretrained(model, tmp_path / "m")
    obj = FinetuneObjective.__new__(FinetuneObjective)
    obj.opts, obj.rows, obj.val_rows = FinetuneOptions(task="binary"), np.arange(0, 50), np.arange(50, 54)
    scored = []

    def score(model, rows, device, autocast):
        scored.append(np.asarray(rows))
        # F1 at cut 0.9 (1 TP, 0 FP, 1 FN) = 2/3 = F1 at cut 0.2 (2 TP, 2 FP): the tie keeps the higher cut;
        # the threshold is the midpoint to the next lower score, (0.9 + 0.6) / 2.
        return Scores(
            np.array(["a", "b", "c", "d"]),
            np.array([0.9, 0.6, 0.5, 0.2]),
            np.array([[1.0], [0.0], [0.0], [1.0]]),
            None,
            4,
        )

    obj.score = score
    thresholds = tune_and_store_thresholds(obj, tmp_path / "m", torch.device("cpu"), contextlib.nullcontext)
    assert len(scored) == 1 and np.array_equal(scored[0], obj.val_rows)
    assert thresholds == pytest.approx([0.75])
    assert load_model(tmp_path / "m").info.thresholds == pytest.approx([0.75])
