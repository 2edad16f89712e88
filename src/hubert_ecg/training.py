"""The one training-loop core shared by pre-training and fine-tuning.

What differs between the two lives in an :class:`Objective` (the loss of a batch, validation, the
parameter groups); everything else is here once: AdamW with linear warm-up and decay sized in
optimizer steps, bf16/fp16 autocast, gradient accumulation and clipping, DDP under torchrun,
validation every N steps with early stopping, ``last``/``best`` checkpoints written atomically,
exact resume (model, optimizer, scheduler, scaler, RNG states, data position), TensorBoard logs
(wandb / MLflow on request) and a progress bar with loss, ECG/s and the data-wait share.

Run directory::

    RUN/last/       model (config.json + model.safetensors) + trainer_state.pt + trainer_state.json
    RUN/previous/   the last-but-one ``last`` (fallback when the newest is corrupt)
    RUN/best/       model + metrics.json of the best validation so far
    RUN/history.jsonl, RUN/tensorboard/, RUN/training_curves.png
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_json, check_writable, sha256_file
from .checkpoint import CheckpointError, load_model, save_pretrained
from .distributed import DistEnv, all_reduce_mean, barrier, broadcast_flag, init_distributed
from .loader import BatchSampler, StoreWindows, make_loader
from .model import HubertECG
from .runtime import (
    autocast_context,
    compile_regions,
    configure_backends,
    precision_dtype,
    resolve_device,
    seed_everything,
)


@dataclass
class TrainConfig:
    """Loop settings shared by pre-training and fine-tuning (sizes are in optimizer steps)."""

    out_dir: str
    max_steps: int = 1000
    batch_size: int = 32  # global batch per micro-step, over all processes
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_fraction: float = 0.08
    clip_grad_norm: float | None = None
    precision: str = "auto"  # auto (bf16 on GPUs with native bf16, else fp16; fp32 on CPU) | bf16 | fp16 | fp32
    val_every: int = 500
    save_every: int | None = None  # defaults to val_every
    patience: int | None = None  # validation rounds without improvement before stopping
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    min_delta: float = 0.0
    log_every: int = 10
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    deterministic: bool = False
    logger: str = "tensorboard"  # tensorboard | wandb | mlflow | none (comma-separated for several)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be min or max, got {self.monitor_mode!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be positive")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already consumed
    best: float | None = None
    best_step: int = 0
    bad_rounds: int = 0
    stopped_early: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """What a training job defines; the loop does the rest."""

    rows: np.ndarray  # training rows of the store
    dataset: StoreWindows

    # Read-only, so an objective may hold a narrower module type (HubertECG, MaskedPrediction): a plain
    # protocol attribute is invariant and would reject those.
    @property
    def module(self) -> nn.Module:
        """What DDP wraps (its forward must touch every trained parameter)."""

    def parameter_groups(self, model: HubertECG, lr: float) -> list[dict[str, Any]]: ...

    def training_loss(
        self, module: nn.Module, batch: dict[str, torch.Tensor], step: int, env: DistEnv, micro: int = 0, accum: int = 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of micro-batch ``micro`` (0 .. accum - 1) of optimizer step ``step`` on this rank."""

    def validate(self, model: HubertECG, device: torch.device, autocast: Any) -> dict[str, float]:
        """Validation metrics. An objective with ``sharded_validation = True`` is called on every
        rank with ``env=`` and must return the same all-reduced metrics everywhere; otherwise only
        rank 0 validates. Objectives may also define ``to(device)`` for their loss constants."""


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------
class RunLogger:
    """TensorBoard by default; wandb / MLflow when asked; always a ``history.jsonl``."""

    def __init__(self, out_dir: Path, kinds: str, config: dict[str, Any], enabled: bool) -> None:
        self.enabled = enabled
        self.history_path = out_dir / "history.jsonl"
        self.writers: list[tuple[str, Any]] = []
        if not enabled:
            return
        for kind in [k.strip() for k in kinds.split(",") if k.strip() and k.strip() != "none"]:
            if kind == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writers.append((kind, SummaryWriter(str(out_dir / "tensorboard"))))
                except ImportError:
                    warnings.warn("tensorboard is not installed; logging to history.jsonl only", stacklevel=2)
            elif kind == "wandb":
                try:
                    import wandb
                except ImportError:
                    raise ValueError("--logger wandb needs `pip install wandb`") from None
                self.writers.append((kind, wandb.init(config=config, dir=str(out_dir))))
            elif kind == "mlflow":
                try:
                    import mlflow
                except ImportError:
                    raise ValueError("--logger mlflow needs `pip install mlflow`") from None
                mlflow.start_run()
                mlflow.log_params({k: str(v)[:250] for k, v in config.items()})
                self.writers.append((kind, mlflow))
            else:
                raise ValueError(f"unknown logger {kind!r}; use tensorboard, wandb, mlflow or none")

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for k, v in values.items():
                    writer.add_scalar(k, v, step)
            elif kind == "wandb":
                writer.log(values, step=step)
            elif kind == "mlflow":
                writer.log_metrics(values, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            elif kind == "wandb":
                writer.finish()
            elif kind == "mlflow":
                writer.end_run()


def read_history(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``history.jsonl`` -> {metric: [(step, value), ...]} for plots."""
    out: dict[str, list[tuple[int, float]]] = {}
    path = Path(run_dir) / "history.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    out.setdefault(k, []).append((rec["step"], float(v)))
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_training_checkpoint(
    run_dir: Path,
    model: HubertECG,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    state: TrainState,
    cuda_rng: list[Any] | None = None,
) -> None:
    """Write ``last`` atomically, keeping the previous ``last`` as ``previous``.

    ``cuda_rng``: every rank's CUDA generator state in rank order (:func:`_gather_cuda_rng`)."""
    tmp = run_dir / ".last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_pretrained(model, tmp)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda_per_rank": list(cuda_rng or [])}
    payload = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
    }
    torch.save(payload, tmp / "trainer_state.pt")
    atomic_write_json(tmp / "trainer_state.json", {**asdict(state), "sha256": sha256_file(tmp / "trainer_state.pt")})
    last, previous = run_dir / "last", run_dir / "previous"
    if last.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(last, previous)
    os.replace(tmp, last)


def load_training_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any], TrainState] | None:
    """The newest good checkpoint (``last``, else ``previous``); None when the run has none yet.

    A corrupt ``last`` falls back to ``previous`` with a warning. When checkpoints exist but none can be
    read, :class:`CheckpointError` is raised: restarting from step 0 in silence would throw the run away.
    """
    import pickle

    problems = []
    for name in ("last", "previous"):
        directory = run_dir / name
        if not directory.exists():
            continue
        try:
            meta = json.loads((directory / "trainer_state.json").read_text())
            if sha256_file(directory / "trainer_state.pt") != meta.pop("sha256"):
                raise CheckpointError(f"{directory / 'trainer_state.pt'}: checksum mismatch")
            load_model(directory)  # verifies the weights' checksum
            payload = torch.load(directory / "trainer_state.pt", map_location="cpu", weights_only=True)
            state = TrainState(**meta)
        except (CheckpointError, OSError, ValueError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as err:
            problem = f"{directory}: {str(err).splitlines()[0] if str(err).strip() else type(err).__name__}"
            warnings.warn(f"ignoring corrupt checkpoint {problem}", stacklevel=2)
            problems.append(problem)
            continue
        if problems:
            print(f"warning: {problems[0]}; resuming from {directory} instead")
        return directory, payload, state
    if problems:
        raise CheckpointError(
            f"{run_dir}: no readable checkpoint to resume from ({'; '.join(problems)}); "
            "start over with --overwrite (the old run is moved aside) or use another --out"
        )
    return None


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _linear_warmup_decay(total: int, warmup_fraction: float) -> Any:
    warmup = max(1, math.ceil(warmup_fraction * total)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class EpochBatches(torch.utils.data.Sampler):
    """The batches of every epoch from ``(epoch, start_batch)`` on, as one endless sequence.

    One DataLoader over this serves the whole run, so worker processes start once instead of once
    per epoch. Each epoch is a :class:`~hubert_ecg.loader.BatchSampler` (same order, keys and
    per-rank slices as before); the loop counts ``batches_per_epoch`` to keep the resume position.
    """

    def __init__(
        self, rows: np.ndarray, batch_size: int, *, seed: int, rank: int, world_size: int, epoch: int, start_batch: int
    ) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size, self.epoch, self.start_batch = rank, world_size, epoch, start_batch

    def epoch_sampler(self, epoch: int, start_batch: int = 0) -> BatchSampler:
        return BatchSampler(
            self.rows,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
            rank=self.rank,
            world_size=self.world_size,
            epoch=epoch,
            start_batch=start_batch,
        )

    def batches_per_epoch(self) -> int:
        return self.epoch_sampler(0).batches_per_epoch()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        epoch, start = self.epoch, self.start_batch
        while True:
            yield from self.epoch_sampler(epoch, start)
            epoch, start = epoch + 1, 0


def _gather_cuda_rng(env: DistEnv, device: torch.device) -> list[Any]:
    """Every rank's CUDA generator state, in rank order (collective; [] off CUDA). Each rank draws
    its own dropout masks on its own GPU, so each must get its own state back on resume."""
    if device.type != "cuda":
        return []
    state = torch.cuda.get_rng_state(device)
    if not env.enabled:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * env.world_size
    dist.all_gather_object(states, state)
    return [torch.as_tensor(s) for s in states]


def _improved(value: float, best: float | None, cfg: TrainConfig) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best - cfg.min_delta if cfg.monitor_mode == "min" else value > best + cfg.min_delta


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    best_dir: Path | None
    last_dir: Path
    # Optimizer steps this call took: 0 when the run was already finished, so what follows training (threshold
    # tuning) knows the saved models are the ones an earlier call finished and leaves them alone.
    steps_run: int = 0


def train(model: HubertECG, objective: Objective, cfg: TrainConfig, env: DistEnv | None = None) -> TrainResult:
    """Run (or resume) a training job in ``cfg.out_dir``; see the module docstring."""
    env = env or init_distributed(cfg.device)
    device = resolve_device(cfg.device, local_rank=env.local_rank)
    run_dir = Path(cfg.out_dir)
    if env.is_main:
        check_writable(run_dir)
    barrier(env)
    seed_everything(cfg.seed, env.rank, cfg.deterministic)
    state, payload = _load_resume_state(model, cfg, env, run_dir)
    first_step = state.step
    run = _setup_run(model, objective, cfg, env, device, state, payload)
    window = _LogWindow({"loss": torch.zeros((), device=device)})
    model.train()
    stop = state.step >= cfg.max_steps or state.stopped_early
    sampler, per_epoch = _epoch_batches(objective, cfg, env, state)
    try:
        if not stop:
            _train_steps(run, sampler, per_epoch, window, payload["rng"] if payload is not None else None)
    finally:
        run.bar.close()
        run.logger.close()
    barrier(env)
    if env.is_main:
        _plot_curves(run_dir)
    best = run_dir / "best"
    return TrainResult(run_dir, state, best if best.exists() else None, run_dir / "last", state.step - first_step)


@dataclass
class _Run:
    """Everything one training run holds while it trains (built once by :func:`_setup_run`)."""

    model: HubertECG
    objective: Objective
    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    run_dir: Path
    state: TrainState
    autocast: Any
    module: nn.Module  # what the forward goes through: the objective's module, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    logger: RunLogger
    bar: Any


@dataclass
class _LogWindow:
    """Sums since the last log line: loss and stats (device tensors, so no sync per step) and throughput."""

    running: dict[str, torch.Tensor]
    start: float = field(default_factory=time.perf_counter)
    wait: float = 0.0  # seconds spent waiting for batches
    samples: int = 0
    steps: int = 0

    def reset(self, device: torch.device) -> None:
        self.running = {k: torch.zeros((), device=device) for k in self.running}
        self.start, self.wait, self.samples, self.steps = time.perf_counter(), 0.0, 0, 0


def _load_resume_state(
    model: HubertECG, cfg: TrainConfig, env: DistEnv, run_dir: Path
) -> tuple[TrainState, dict[str, Any] | None]:
    """The state to start from and the checkpoint payload (None on a fresh run); loads the weights."""
    resume = load_training_checkpoint(run_dir)
    if resume is None:
        return TrainState(), None
    directory, payload, state = resume
    model.load_state_dict(load_model(directory).state_dict())
    if env.is_main:  # on the console, not the log: the CLI configures no logging
        if state.step >= cfg.max_steps or state.stopped_early:
            why = "stopped early" if state.stopped_early else "step limit"
            print(
                f"run in {run_dir} is already finished at step {state.step} of {cfg.max_steps} ({why}); "
                "nothing to train (--resume --max-steps N continues a step-limited run)"
            )
        else:
            print(f"resuming from step {state.step} of {cfg.max_steps} ({directory})")
    return state, payload


def _setup_run(
    model: HubertECG,
    objective: Objective,
    cfg: TrainConfig,
    env: DistEnv,
    device: torch.device,
    state: TrainState,
    payload: dict[str, Any] | None,
) -> _Run:
    """Move to the device, build optimizer/scheduler/scaler (restored on resume), wrap for DDP, open logs."""
    model.to(device)
    objective.module.to(device)
    if hasattr(objective, "to"):  # loss constants (pos_weight, class weights): moved once, not per step
        objective.to(device)
    dtype = precision_dtype(cfg.precision, device)
    configure_backends(device, dtype, cfg.deterministic)
    autocast = autocast_context(device, dtype)
    optimizer, scheduler, scaler = _build_optimizer(model, objective, cfg, device, dtype, payload)
    module = _wrap_module(model, objective, cfg, env, device)
    run_dir = Path(cfg.out_dir)
    logger = RunLogger(run_dir, cfg.logger, asdict(cfg), enabled=env.is_main)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=cfg.max_steps,
        initial=state.step,
        disable=not (cfg.progress and env.is_main),
        dynamic_ncols=True,
        desc="train",
        unit="step",
    )
    return _Run(
        model, objective, cfg, env, device, run_dir, state, autocast, module, optimizer, scheduler, scaler, logger, bar
    )


def _build_optimizer(
    model: HubertECG,
    objective: Objective,
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    payload: dict[str, Any] | None,
) -> tuple[torch.optim.Optimizer, Any, Any]:
    """AdamW over the objective's parameter groups, the warm-up/decay schedule and (fp16) the grad scaler."""
    groups = objective.parameter_groups(model, cfg.lr)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        **({"fused": True} if fused else {}),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_warmup_decay(cfg.max_steps, cfg.warmup_fraction))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        # The RNG states are restored later, once the batch iterator exists (see _restore_rng).
    return optimizer, scheduler, scaler


def _wrap_module(
    model: HubertECG, objective: Objective, cfg: TrainConfig, env: DistEnv, device: torch.device
) -> nn.Module:
    """The objective's module, with compiled layers on request and DDP-wrapped under torchrun."""
    module: nn.Module = objective.module
    if cfg.compile:  # per layer: layerdrop's skips stay outside the graphs (no recompilation)
        compile_regions(model)
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=model.config.layerdrop > 0,
        )
    return module


def _epoch_batches(objective: Objective, cfg: TrainConfig, env: DistEnv, state: TrainState) -> tuple[EpochBatches, int]:
    """The endless batch sampler from the saved data position, and the number of batches per epoch."""
    sampler = EpochBatches(
        objective.rows,
        cfg.batch_size,
        seed=cfg.seed,
        rank=env.rank,
        world_size=env.world_size,
        epoch=state.epoch,
        start_batch=state.batch_in_epoch,
    )
    per_epoch = sampler.batches_per_epoch()
    if state.batch_in_epoch >= per_epoch:  # saved exactly at the end of an epoch
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        sampler.epoch, sampler.start_batch = state.epoch, 0
    return sampler, per_epoch


def _train_steps(
    run: _Run, sampler: EpochBatches, per_epoch: int, window: _LogWindow, rng: dict[str, Any] | None
) -> None:
    """Consume batches until the step limit or early stopping; ``rng`` (on resume) is restored here."""
    cfg, state, device = run.cfg, run.state, run.device
    loader = make_loader(run.objective.dataset, sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    batches = iter(loader)  # draws its base seed from the global CPU generator
    if rng is not None:
        _restore_rng(rng, run.env, device)
    micro = 0
    fetch_start = time.perf_counter()
    for batch in batches:
        window.wait += time.perf_counter() - fetch_start
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        in_step = micro % cfg.grad_accum  # which micro-batch of this optimizer step
        micro += 1
        sync_now = micro % cfg.grad_accum == 0
        _training_step(run, batch, in_step, sync_now, window)
        state.batch_in_epoch += 1
        if state.batch_in_epoch >= per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if sync_now:
            _optimizer_step(run, window)
            _maybe_log(run, window)
            if _maybe_validate_and_save(run):
                break
        fetch_start = time.perf_counter()


def _training_step(run: _Run, batch: dict[str, Any], in_step: int, sync_now: bool, window: _LogWindow) -> None:
    """Forward and backward of one micro-batch (gradients synchronised across ranks only on ``sync_now``)."""
    cfg, env = run.cfg, run.env
    no_sync = env.enabled and not sync_now
    ctx = run.module.no_sync() if no_sync else contextlib.nullcontext()  # type: ignore[operator]
    with ctx:
        with run.autocast():
            loss, stats = run.objective.training_loss(
                run.module, batch, run.state.step, env, micro=in_step, accum=cfg.grad_accum
            )
        scaled = loss / cfg.grad_accum
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    running = window.running
    running["loss"] += loss.detach()
    for k, v in stats.items():
        running[k] = running.get(k, torch.zeros((), device=run.device)) + v.detach()
    window.samples += len(batch["input"]) * env.world_size


def _optimizer_step(run: _Run, window: _LogWindow) -> None:
    """Clip (after unscaling), step the optimizer and schedule, clear the gradients, count the step."""
    cfg, scaler, optimizer = run.cfg, run.scaler, run.optimizer
    if cfg.clip_grad_norm:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    window.steps += 1
    run.bar.update(1)


def _maybe_log(run: _Run, window: _LogWindow) -> None:
    """Every ``log_every`` steps (and at the last): mean loss/stats of the window, ECG/s, data-wait share, lr."""
    cfg, step = run.cfg, run.state.step
    if not (step % cfg.log_every == 0 or step == cfg.max_steps):
        return
    elapsed = time.perf_counter() - window.start
    running = window.running
    if run.env.enabled:  # the logged loss is the global one, not rank 0's share
        running = {k: all_reduce_mean(v, run.env) for k, v in running.items()}
    values = {k: (v / (window.steps * cfg.grad_accum)).item() for k, v in running.items()}
    values.update(
        ecg_per_s=window.samples / max(elapsed, 1e-9),
        data_wait=window.wait / max(elapsed, 1e-9),
        lr=float(run.scheduler.get_last_lr()[0]),
    )
    run.logger.log(step, {f"train/{k}": v for k, v in values.items()})
    run.bar.set_postfix({k: f"{values[k]:.3g}" for k in values if k != "lr"})
    window.running = running
    window.reset(run.device)


def _maybe_validate_and_save(run: _Run) -> bool:
    """Validate every ``val_every`` steps, write ``last`` every ``save_every`` steps (and on the last or
    stopping step); returns True when training should stop."""
    cfg, state, env = run.cfg, run.state, run.env
    stop = False
    if state.step % cfg.val_every == 0 or state.step == cfg.max_steps:
        stop = _validate_and_checkpoint(run.model, run.objective, cfg, state, run.device, run.autocast, run.logger, env)
    if state.step % (cfg.save_every or cfg.val_every) == 0 or state.step == cfg.max_steps or stop:
        _save_checkpoint(run)
    return stop or state.step >= cfg.max_steps


def _save_checkpoint(run: _Run) -> None:
    """Write ``last`` on rank 0 with every rank's CUDA RNG state (collective: all ranks call it)."""
    cuda_rng = _gather_cuda_rng(run.env, run.device)
    if run.env.is_main:
        save_training_checkpoint(
            run.run_dir, run.model, run.optimizer, run.scheduler, run.scaler, run.state, cuda_rng=cuda_rng
        )
    barrier(run.env)


def _restore_rng(rng: dict[str, Any], env: DistEnv, device: torch.device) -> None:
    """Put the generators back as they were when the checkpoint was written.

    Called after the batch iterator is created: creating it draws from the CPU generator, which the
    uninterrupted run did before its first step, long before the checkpoint. Restored earlier, that
    draw would shift every later dropout mask and the resumed run would diverge from the uninterrupted one.
    """
    torch.set_rng_state(rng["torch"])
    random.setstate(tuple(rng["python"]) if isinstance(rng["python"], list) else rng["python"])
    cuda_states = rng.get("cuda_per_rank") or []
    if device.type == "cuda" and len(cuda_states) == env.world_size:
        torch.cuda.set_rng_state(cuda_states[env.rank].cpu(), device)


def _plot_curves(run_dir: Path) -> None:
    """``training_curves.png``: losses and validation metrics over steps (rates and speeds left out)."""
    from .plots import plot_training_curves

    history = {k: v for k, v in read_history(run_dir).items() if not k.endswith(("ecg_per_s", "data_wait", "/lr"))}
    if history:
        plot_training_curves(history, run_dir / "training_curves.png")


def _validate_and_checkpoint(
    model: HubertECG,
    objective: Objective,
    cfg: TrainConfig,
    state: TrainState,
    device: torch.device,
    autocast: Any,
    logger: RunLogger,
    env: DistEnv,
) -> bool:
    """Validate (on every rank when the objective shards validation, else on rank 0), keep ``best``
    on rank 0, decide early stopping; returns True to stop (the same decision on every rank)."""
    stop = False
    sharded = bool(getattr(objective, "sharded_validation", False))
    if sharded or env.is_main:
        model.eval()
        with torch.no_grad():
            metrics = (
                objective.validate(model, device, autocast, env=env)  # type: ignore[call-arg]  # sharded objectives
                if sharded
                else objective.validate(model, device, autocast)
            )
        model.train()
    if env.is_main:
        state.last_metrics = metrics
        logger.log(state.step, {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        value = metrics.get(cfg.monitor)
        if value is None:
            raise ValueError(
                f"validation did not produce the monitored metric {cfg.monitor!r} (have: {', '.join(sorted(metrics))})"
            )
        if isinstance(value, float) and math.isnan(value):
            warnings.warn(
                f"validation {cfg.monitor} is undefined at step {state.step} (e.g. a label with only one "
                "class in the validation split); best/ is kept only when it is defined",
                stacklevel=2,
            )
        if _improved(value, state.best, cfg):
            state.best, state.best_step, state.bad_rounds = float(value), state.step, 0
            best_dir = Path(cfg.out_dir) / "best"
            save_pretrained(model, best_dir)
            atomic_write_json(best_dir / "metrics.json", {"step": state.step, **metrics})
        else:
            state.bad_rounds += 1
            if cfg.patience is not None and state.bad_rounds >= cfg.patience:
                state.stopped_early = stop = True
    return broadcast_flag(stop, env, device)
