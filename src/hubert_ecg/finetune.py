"""Fine-tuning: heads, losses, what trains, layer-wise learning-rate decay, and thresholds.

Defaults follow what makes HuBERT-ECG train well (peer-systems §2.11: it does not train without
layer-wise learning rates): layer-wise LR decay on (each layer below the top gets ``decay`` times
the LR of the layer above), the conv stem frozen, dropout as configured, random 5 s crops, early
stopping on the validation metric, and per-label decision thresholds tuned on validation (max F1)
stored in the saved model so that prediction needs nothing else.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .config import TASKS, HeadConfig
from .distributed import DistEnv
from .evaluate import (
    FINETUNED_ON,
    Scores,
    describe_duplicates,
    duplicate_signals,
    score_rows,
    training_provenance,
    write_duplicate_listing,
)
from .loader import StoreWindows
from .metrics import task_metrics, task_thresholds
from .model import HubertECG
from .store import ECGStore
from .tasks import get_task, monitor_mode

if TYPE_CHECKING:
    from .training import TrainConfig, TrainResult


@dataclass
class FinetuneOptions:
    """Task, head, loss and what trains (everything but the loop settings)."""

    task: str = "multi_label"
    head_type: str = "linear"
    head_hidden: int | None = None
    head_activation: str = "tanh"
    loss: str = "auto"  # auto | bce | ce | mse | huber
    pos_weight: bool = True  # BCE pos_weight = neg/pos from the TRAINING rows only
    class_weights: bool = False  # CE weights by class index, from the training rows
    layer_decay: float = 0.8  # 1.0 switches layer-wise LR decay off
    head_lr_mult: float = 10.0
    train_last_blocks: int | None = None  # None = all transformer blocks
    train_conv_stem: bool = False
    linear_probe: bool = False
    crop: str = "random"
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    activation_dropout: float | None = None
    layerdrop: float | None = 0.0
    classifier_dropout: float | None = None
    monitor: str | None = None  # None = the task's default (auroc; mae for regression)
    eval_windows: str = "first"  # first | sliding | random (validation TTA)
    eval_crops: int = 3
    eval_aggregate: str = "mean"
    val_batch: int = 64
    # Zero each lead of a training window with this probability (>= 1 lead kept): robustness to reduced-lead
    # input (a 6-lead limb export, a 1-lead strip). Validation always sees the record as stored.
    lead_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0 <= self.lead_dropout < 1:
            raise ValueError(f"lead_dropout must be in [0, 1), got {self.lead_dropout}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        task = get_task(self.task)
        if self.monitor is None:
            self.monitor = task.monitor
        monitor_mode(self.monitor)  # a known metric
        if self.monitor not in task.monitors:
            raise ValueError(
                f"--monitor {self.monitor} is not a validation metric of task {self.task} "
                f"(choose from {', '.join(task.monitors)})"
            )


def check_label_values(store: ECGStore, task: str, rows: np.ndarray) -> None:
    """Refuse label values the task's loss would silently misuse, naming the first offending record.

    multi_label / binary need 0 or 1 (multi-label may be blank = unknown); multi_class needs a
    class index 0, 1, 2 ... in every used row. Regression takes any finite value or blank.
    """
    spec = get_task(task)
    if store.labels is None:
        raise ValueError(f"{store.path}: the store has no labels; prepare it with --labels")
    values = spec.label_columns(store.labels[rows])
    bad, rule = spec.invalid_labels(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{store.path}: record {str(store.record_ids[rows[i]])!r}, label {store.label_names[j]!r} is "
            f"{values[i, j]:g}; {rule} ({int(bad.sum())} such value(s) in the rows used)"
        )


def num_outputs(task: str, labels: np.ndarray) -> int:
    """Logits the head needs: labels (N, L) for multi-label / regression, class count for multi-class, else 1."""
    return get_task(task).num_outputs(labels)


def prepare_model(
    model: HubertECG, opts: FinetuneOptions, n_outputs: int, label_names: list[str], keep_head: bool = False
) -> HubertECG:
    """Attach the head, apply dropout overrides and freezing; mutates and returns ``model``."""
    if not (keep_head and model.config.head is not None and model.config.head.num_labels == n_outputs):
        head = HeadConfig(
            num_labels=n_outputs,
            type=opts.head_type,
            hidden_size=opts.head_hidden,
            activation=opts.head_activation,
            dropout=opts.classifier_dropout if opts.classifier_dropout is not None else 0.1,
        )
        model.set_head(head)
    elif model.config.vocab_sizes:
        model.drop_codebooks()  # the kept head keeps its trained weights
    model.set_dropouts(
        hidden=opts.hidden_dropout,
        attention=opts.attention_dropout,
        activation=opts.activation_dropout,
        layerdrop=opts.layerdrop,
        classifier=opts.classifier_dropout,
    )
    model.info = dataclasses.replace(model.info, task=opts.task, label_names=list(label_names), thresholds=None)
    n_layers = model.config.num_hidden_layers
    trainable_from = 0 if opts.train_last_blocks is None else max(0, n_layers - opts.train_last_blocks)
    for name, p in model.named_parameters():
        if name.startswith("classifier."):
            p.requires_grad = True
        elif opts.linear_probe:
            p.requires_grad = False
        elif name.startswith("feature_extractor."):
            p.requires_grad = opts.train_conv_stem
        elif name.startswith("encoder.layers."):
            p.requires_grad = int(name.split(".")[2]) >= trainable_from
        else:  # feature projection, positional conv, encoder LayerNorm, mask embedding
            p.requires_grad = trainable_from == 0
    # Fine-tuning never masks: masked_spec_embed (and the first conv's bias under GroupNorm) get no
    # gradient; left trainable, DDP with find_unused_parameters=False fails at the second step.
    for name in model.inert_parameters(masking=False):
        model.get_parameter(name).requires_grad = False
    return model


@dataclass
class FinetuneObjective:
    """Objective for :func:`hubert_ecg.training.train` (also used to score validation)."""

    model: HubertECG
    store: ECGStore
    opts: FinetuneOptions
    rows: np.ndarray
    val_rows: np.ndarray
    seed: int = 0
    weight_decay: float = 0.01
    pos_weight: torch.Tensor | None = field(default=None, init=False)
    class_weight: torch.Tensor | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        labels = self.store.labels
        if labels is None:
            raise ValueError(f"{self.store.path}: the store has no labels; prepare it with --labels")
        task = self.opts.task
        check_label_values(self.store, task, np.concatenate([self.rows, self.val_rows]))
        # From the TRAINING rows only: a validation split with another prevalence must not change them.
        self.pos_weight, self.class_weight = get_task(task).training_weights(
            labels[self.rows],
            pos_weight=self.opts.pos_weight,
            class_weights=self.opts.class_weights,
            n_outputs=num_outputs(task, labels),
        )  # one weight per head output, whatever the split
        self.module = self.model
        self.dataset = StoreWindows(self.store, crop=self.opts.crop, labels=True, seed=self.seed)

    def parameter_groups(self, model: HubertECG, lr: float) -> list[dict[str, Any]]:
        from .runtime import param_groups

        return param_groups(model, lr, layer_decay=self.opts.layer_decay, head_lr_mult=self.opts.head_lr_mult)

    def to(self, device: torch.device) -> FinetuneObjective:
        """Move the loss weights to ``device`` once (the training loop calls this after moving the
        model): a per-step host-to-device copy would make the CPU wait for the forward every step."""
        if self.pos_weight is not None:
            self.pos_weight = self.pos_weight.to(device)
        if self.class_weight is not None:
            self.class_weight = self.class_weight.to(device)
        return self

    @staticmethod
    def _on(weight: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        # A device comparison is free; the copy happens only if to() was not called (e.g. direct use).
        return weight if weight is None or weight.device == device else weight.to(device)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss (:meth:`hubert_ecg.tasks.Task.loss`): blank labels are masked per label."""
        return get_task(self.opts.task).loss(
            logits,
            labels,
            pos_weight=self._on(self.pos_weight, logits.device),
            class_weight=self._on(self.class_weight, logits.device),
            kind=self.opts.loss,
        )

    def training_loss(
        self, module: nn.Module, batch: dict[str, torch.Tensor], step: int, env: DistEnv, micro: int = 0, accum: int = 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = None if batch.get("full", False) else batch["attention_mask"]
        x = batch["input"]
        if self.opts.lead_dropout > 0:
            from .preprocess import apply_lead_dropout

            # Seeded by (seed, step, micro, rank): a resumed run drops the same leads it would have.
            rng = np.random.default_rng([int(self.seed), int(step), int(micro), int(env.rank)])
            x = apply_lead_dropout(x, self.opts.lead_dropout, rng)
        out = module(x, mask)
        return self.loss(out.logits, batch["labels"]), {}

    def score(self, model: HubertECG, rows: np.ndarray, device: torch.device, autocast: Any) -> Scores:
        return score_rows(
            model,
            self.store,
            rows,
            task=self.opts.task,
            device=device,
            autocast=autocast,
            windows=self.opts.eval_windows,
            n_crops=self.opts.eval_crops,
            aggregate=self.opts.eval_aggregate,
            batch_size=self.opts.val_batch,
            seed=self.seed,
            loss_fn=self.loss,
        )

    @torch.no_grad()
    def validate(self, model: HubertECG, device: torch.device, autocast: Any) -> dict[str, float]:
        scores = self.score(model, self.val_rows, device, autocast)
        assert scores.labels is not None  # scored from a labelled store
        # A record with a blank label leaves that label's metrics only.
        result = task_metrics(self.opts.task, scores.labels, scores.probabilities)
        metrics = {"loss": scores.loss if scores.loss is not None else float("nan")}
        metrics.update({k: float(v) for k, v in result.macro.items()})
        metrics.update({k: float(v) for k, v in result.overall.items()})
        return metrics


def tune_and_store_thresholds(
    objective: FinetuneObjective, model_dir: Path, device: torch.device, autocast: Any
) -> list[float] | None:
    """Max-F1 thresholds on the validation rows, written into the saved model's config."""
    from .checkpoint import load_model

    task = get_task(objective.opts.task)
    if not task.uses_thresholds:
        return None
    model = load_model(model_dir, device=device)
    scores = objective.score(model, objective.val_rows, device, autocast)
    assert scores.labels is not None  # scored from a labelled store
    thresholds = np.asarray(task_thresholds(task, scores.labels, scores.probabilities)).tolist()
    from .checkpoint import update_saved_info

    info = update_saved_info(model_dir, thresholds=[float(t) for t in np.atleast_1d(thresholds)])
    return info.thresholds


@dataclass
class FinetuneRun:
    """What to fine-tune, on what, from where: the ``run`` section of a fine-tuning ``run.json``.

    The keyword arguments of :func:`run_finetune` (``store`` is its first argument).
    """

    store: str | None = None
    init: str | None = None
    random_init_size: str | None = None
    keep_head: bool = False
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.1
    lp_then_ft_steps: int = 0
    gradient_checkpointing: bool = False
    model_overrides: dict[str, Any] | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`run_finetune` (all fields but ``store``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "store"}


def finetune_settings(run: FinetuneRun, cfg: TrainConfig, opts: FinetuneOptions) -> dict[str, Any]:
    """The ``settings`` of a fine-tuning ``run.json`` (what ``--print-config`` prints, ``--config`` reads)."""
    from .runs import to_jsonable

    return {"run": to_jsonable(run), "train": to_jsonable(cfg), "finetune": to_jsonable(opts)}


def _local_reference(reference: str | None) -> str | None:
    """An existing local path as an absolute path (the run then compares equal from any folder)."""
    if reference is None:
        return None
    path = Path(reference).expanduser()
    return str(path.resolve()) if path.exists() else reference


def run_finetune(
    store_path: str,
    cfg: TrainConfig,
    opts: FinetuneOptions,
    *,
    init: str | None = None,
    random_init_size: str | None = None,
    keep_head: bool = False,
    train_split: str = "train",
    val_split: str = "val",
    val_fraction: float = 0.1,
    lp_then_ft_steps: int = 0,
    gradient_checkpointing: bool = False,
    model_overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: list[str] | None = None,
) -> TrainResult:
    """Fine-tune on a labelled store; keeps ``best`` and ``last``, tunes thresholds on validation.

    ``cfg.out_dir`` gets a ``run.json`` (:mod:`hubert_ecg.runs`): re-running with the same settings
    resumes; other settings are refused unless ``overwrite`` (the old run is moved aside) or ``resume``
    with safe changes only (:data:`hubert_ecg.runs.SAFE_RESUME_CHANGES`).
    """
    from .training import train

    store = ECGStore(store_path)
    run = FinetuneRun(
        store_path,
        init,
        random_init_size,
        keep_head,
        train_split,
        val_split,
        val_fraction,
        lp_then_ft_steps,
        gradient_checkpointing,
        model_overrides,
    )
    _begin_finetune_run(store, run, cfg, opts, overwrite=overwrite, resume=resume, command=command)
    model = _initial_model(store, run, cfg.seed)
    rows = _training_rows(store, run, cfg.seed)
    outputs = _head_outputs(store, opts.task)
    earlier = _earlier_training(model)
    model = prepare_model(model, opts, *outputs, keep_head=keep_head)
    # What the model saw: evaluate refuses these rows as a test set and matches label columns by name.
    model.info.extra[FINETUNED_ON] = {**training_provenance(store, rows, opts.task), "earlier": earlier}
    _report_duplicate_signals(store, rows, Path(cfg.out_dir), cfg.device)
    model.update_config(gradient_checkpointing=gradient_checkpointing)
    model.info.preprocessing = store.spec.to_dict()
    model.info.source = (
        f"fine-tuned on {store.path} from {init}"
        if init
        else f"trained from scratch ({random_init_size}) on {store.path}"
    )
    if lp_then_ft_steps > 0 and not opts.linear_probe:
        model = _linear_probe_first(model, store, opts, cfg, rows, outputs, lp_then_ft_steps)
    objective = FinetuneObjective(model, store, opts, *rows, cfg.seed, cfg.weight_decay)
    result = train(model, objective, cfg)
    _tune_saved_thresholds(objective, result, cfg)
    return result


def _begin_finetune_run(
    store: ECGStore,
    run: FinetuneRun,
    cfg: TrainConfig,
    opts: FinetuneOptions,
    *,
    overwrite: bool,
    resume: bool,
    command: list[str] | None,
) -> None:
    """Check the run, settle the monitor, and start (or resume) the run record in ``cfg.out_dir``."""
    from .runs import begin_training_run

    _check_finetune_run(store, run)
    cfg.monitor = opts.monitor or get_task(opts.task).monitor  # resolved by FinetuneOptions already
    cfg.monitor_mode = monitor_mode(cfg.monitor)
    # run.json records absolute paths: the run then compares equal from any folder.
    recorded = dataclasses.replace(run, store=str(Path(store.path).resolve()), init=_local_reference(run.init))
    begin_training_run(
        cfg.out_dir,
        cfg.device,
        "finetune",
        finetune_settings(recorded, cfg, opts),
        store=store,
        init=run.init,
        overwrite=overwrite,
        resume=resume,
        command=command,
    )


def _check_finetune_run(store: ECGStore, run: FinetuneRun) -> None:
    """Refuse a store without labels and an ambiguous or contradictory starting point."""
    if store.labels is None:
        raise ValueError(f"{store.path}: the store has no labels; prepare it with --labels")
    if (run.init is None) == (run.random_init_size is None):
        raise ValueError("give exactly one of --init CHECKPOINT or --random-init --size SIZE")
    if run.init is not None and run.model_overrides:
        raise ValueError("--model-overrides changes the architecture of a fresh model; it needs --random-init")
    from .store import SPLIT_ALIASES

    for what, split in (("train_split", run.train_split), ("val_split", run.val_split)):
        # Training or validating (which picks best/ and tunes the thresholds) on test rows leaves no test.
        if split and SPLIT_ALIASES.get(split.lower(), split) == "test":
            raise ValueError(
                f"{what} {split!r} is the test split: fine-tuning never trains or validates on test rows "
                "(validation chooses best/ and tunes the thresholds); use 'train' / 'val'"
            )


def _initial_model(store: ECGStore, run: FinetuneRun, seed: int) -> HubertECG:
    """The model fine-tuning starts from: ``run.init`` loaded, or a fresh ``run.random_init_size`` one."""
    from .checkpoint import load_model
    from .model import create_model

    # Random weights (a fresh model, a new head) must come from --seed, not from the process: the same
    # command then gives the same model.
    torch.manual_seed(seed)
    if run.init is not None:
        model = load_model(run.init)
    elif run.random_init_size is not None:
        model = create_model(run.random_init_size, input_rate_hz=int(round(store.fs)), **(run.model_overrides or {}))
    else:  # excluded by _check_finetune_run; narrows random_init_size for the type checker
        raise ValueError("give exactly one of --init CHECKPOINT or --random-init --size SIZE")
    if model.info.preprocessing is not None and model.info.preprocessing != store.spec.to_dict():
        import warnings

        warnings.warn(
            "the store's preprocessing differs from the checkpoint's; the fine-tuned model records the store's",
            stacklevel=3,  # the caller of run_finetune
        )
    return model


def _training_rows(store: ECGStore, run: FinetuneRun, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows); the console says which rows validate."""
    from .store import train_val_rows

    # Never validation rows from the test split; a store without 'val' gets a seeded share of its
    # training records (whole records / patients), and the console says which rows were used.
    train_rows, val_rows, split_note = train_val_rows(
        store, val_split=run.val_split, fraction=run.val_fraction, seed=seed, train_split=run.train_split or "train"
    )
    print(f"hubert-ecg: {store.path}: {split_note}", file=sys.stderr)
    return train_rows, val_rows


def _earlier_training(model: HubertECG) -> list[dict[str, Any]]:
    """The stores (and splits) an init checkpoint was already fine-tuned on: still seen by the new model."""
    previous = (model.info.extra or {}).get(FINETUNED_ON)
    if not isinstance(previous, dict):
        return []
    older = [e for e in previous.get("earlier") or [] if isinstance(e, dict)]
    keep = ("path", "rows", "manifest_sha256", "seen_splits")
    return [{k: e.get(k) for k in keep} for e in [previous, *older]]


def _report_duplicate_signals(store: ECGStore, rows: tuple[np.ndarray, np.ndarray], out_dir: Path, device: str) -> None:
    """Warn (console line + ``OUT/duplicate_signals.csv``) when one recording sits in two splits under two ids.

    An identical signal in training and test (a file exported twice, a record copied under a new id) makes
    the test metrics optimistic; the store's record ids cannot show it, the stored samples do. A warning,
    not a refusal: the user decides whether the copies are the same examination.
    """
    from .distributed import init_distributed
    from .store import store_splits

    if not init_distributed(device).is_main:  # one process reads the store for it; the others need nothing
        return
    train_rows, val_rows = rows
    role = store_splits(store).astype(object).copy()
    role[role == ""] = "unsplit"
    role[train_rows] = "train"
    role[val_rows] = "val"
    found = duplicate_signals(store, {name: np.flatnonzero(role == name) for name in sorted(set(role.tolist()))})
    if not found:
        return
    listing = out_dir / "duplicate_signals.csv"
    write_duplicate_listing(listing, found)
    print(f"hubert-ecg: {store.path}: warning: {describe_duplicates(found)}; listed in {listing}", file=sys.stderr)


def _head_outputs(store: ECGStore, task_name: str) -> tuple[int, list[str]]:
    """(number of head outputs, their names) for the store's labels."""
    assert store.labels is not None  # checked by _check_finetune_run
    task = get_task(task_name)
    label_names = list(store.label_names)
    n_out = num_outputs(task_name, store.labels)
    classes = store.label_classes.get(label_names[0]) if label_names and task.outputs_are_classes else None
    if classes:
        # Text labels (prepare on a categorical column): the stored class names, in index order.
        n_out = max(n_out, len(classes))
        return n_out, list(classes) + [f"{label_names[0]}={c}" for c in range(len(classes), n_out)]
    return n_out, task.output_names(label_names, n_out)


def _linear_probe_first(
    model: HubertECG,
    store: ECGStore,
    opts: FinetuneOptions,
    cfg: TrainConfig,
    rows: tuple[np.ndarray, np.ndarray],
    outputs: tuple[int, list[str]],
    steps: int,
) -> HubertECG:
    """Train the head alone for ``steps`` (in ``OUT/linear-probe``), then return its best model set up for
    fine-tuning with ``opts``."""
    from .checkpoint import load_model
    from .training import train

    lp_opts = dataclasses.replace(opts, linear_probe=True)
    lp_cfg = dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir) / "linear-probe"), max_steps=steps)
    lp_model = prepare_model(model, lp_opts, *outputs, keep_head=True)
    lp_result = train(lp_model, FinetuneObjective(lp_model, store, lp_opts, *rows, cfg.seed), lp_cfg)
    model = load_model(lp_result.best_dir or lp_result.last_dir)
    model = prepare_model(model, opts, *outputs, keep_head=True)
    model.info.preprocessing = store.spec.to_dict()
    return model


def _saved_thresholds(model_dir: Path) -> list[float] | None:
    """The thresholds recorded in a saved model's config.json (None: not tuned yet), without loading weights."""
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    ours = config.get("hubert_ecg", config) if isinstance(config, dict) else {}
    info = ours.get("info") if isinstance(ours, dict) else None
    return info.get("thresholds") if isinstance(info, dict) else None


def _tune_saved_thresholds(objective: FinetuneObjective, result: TrainResult, cfg: TrainConfig) -> None:
    """Decision thresholds tuned on validation, written into the saved best and last models (main process).

    A call that trained no step (the run was already finished) keeps the thresholds an earlier call tuned:
    re-running a finished command must change nothing; a model saved without thresholds (a run killed
    between its last step and the tuning) is still tuned.
    """
    from .distributed import init_distributed
    from .runtime import autocast_context, precision_dtype, resolve_device

    env = init_distributed(cfg.device)
    if not (env.is_main and get_task(objective.opts.task).uses_thresholds):
        return
    device = resolve_device(cfg.device, local_rank=env.local_rank)
    autocast = autocast_context(device, precision_dtype(cfg.precision, device))
    kept = []
    for directory in (result.best_dir, result.last_dir):
        if directory is None or not directory.exists():
            continue
        if result.steps_run == 0 and _saved_thresholds(directory) is not None:
            kept.append(directory.name)
            continue
        tune_and_store_thresholds(objective, directory, device, autocast)
    if kept:
        print(
            f"hubert-ecg: {cfg.out_dir}: no step trained; the thresholds of {' and '.join(kept)} are kept as tuned",
            file=sys.stderr,
        )
