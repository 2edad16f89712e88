"""Fine-tuning: heads, losses, what trains, layer-wise learning-rate decay, and thresholds.

Defaults follow what makes HuBERT-ECG train well (peer-systems §2.11: it does not train without
layer-wise learning rates): layer-wise LR decay on (each layer below the top gets ``decay`` times
the LR of the layer above), the conv stem frozen, dropout as configured, random 5 s crops, early
stopping on the validation metric, and per-label decision thresholds tuned on validation (max F1)
stored in the saved model so that prediction needs nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadConfig, TASKS
from .loader import StoreWindows
from .distributed import DistEnv
from .evaluate import Scores, score_rows, targets_for_metrics
from .model import HubertECG
from .store import ECGStore

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
    monitor: str = "auroc"
    eval_windows: str = "first"  # first | sliding | random (validation TTA)
    eval_crops: int = 3
    eval_aggregate: str = "mean"
    val_batch: int = 64

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


def check_label_values(store: ECGStore, task: str, rows: np.ndarray) -> None:
    """Refuse label values the task's loss would silently misuse, naming the first offending record.

    multi_label / binary need 0 or 1 (multi-label may be blank = unknown); multi_class needs a
    class index 0, 1, 2 ... in every used row. Regression takes any finite value or blank.
    """
    values = store.labels[rows]
    if task in ("binary", "multi_class"):
        values = values[:, :1]  # these tasks read the first label column only
    if task in ("multi_label", "binary"):
        bad = np.isfinite(values) & (values != 0) & (values != 1)
        rule = f"{task} labels must be 0 or 1" + (" (blank = unknown)" if task == "multi_label" else "")
    elif task == "multi_class":
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
        rule = "multi_class labels must be class indices 0, 1, 2 ... (no blanks)"
    else:
        bad = np.isinf(values)
        rule = "regression targets must be finite (blank = unknown)"
    if task == "binary":
        bad = bad | ~np.isfinite(values)
        rule += " (no blanks)"
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{store.path}: record {str(store.record_ids[rows[i]])!r}, label {store.label_names[j]!r} is "
                         f"{values[i, j]:g}; {rule} ({int(bad.sum())} such value(s) in the rows used)")


MONITOR_MODES = {"loss": "min", "mae": "min", "rmse": "min", "auroc": "max", "auprc": "max", "f1": "max",
                 "accuracy": "max", "r2": "max", "balanced_accuracy": "max", "pearson_r": "max"}


def num_outputs(task: str, labels: np.ndarray) -> int:
    """Logits the head needs: labels (N, L) for multi-label, class count for multi-class, 1 otherwise."""
    if task == "multi_label":
        return labels.shape[1]
    if task == "multi_class":
        finite = labels[:, 0][np.isfinite(labels[:, 0])]
        return int(finite.max()) + 1 if len(finite) else 2
    return labels.shape[1] if task == "regression" else 1


def prepare_model(model: HubertECG, opts: FinetuneOptions, n_outputs: int, label_names: list[str],
                  keep_head: bool = False) -> HubertECG:
    """Attach the head, apply dropout overrides and freezing; mutates and returns ``model``."""
    if not (keep_head and model.config.head is not None and model.config.head.num_labels == n_outputs):
        head = HeadConfig(num_labels=n_outputs, type=opts.head_type, hidden_size=opts.head_hidden,
                          activation=opts.head_activation,
                          dropout=opts.classifier_dropout if opts.classifier_dropout is not None else 0.1)
        model.set_head(head)
    elif model.config.vocab_sizes:
        model.drop_codebooks()  # the kept head keeps its trained weights
    model.set_dropouts(hidden=opts.hidden_dropout, attention=opts.attention_dropout,
                       activation=opts.activation_dropout, layerdrop=opts.layerdrop,
                       classifier=opts.classifier_dropout)
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
    return model


def layerwise_groups(model: HubertECG, lr: float, decay: float, head_lr_mult: float,
                     weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups with LR ``lr * decay ** depth`` (depth 0 = top layer); the head gets ``lr * head_lr_mult``."""
    n_layers = model.config.num_hidden_layers
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("classifier."):
            scale = head_lr_mult
        elif name.startswith("encoder.layers."):
            scale = decay ** (n_layers - 1 - int(name.split(".")[2]))
        elif name.startswith("feature_extractor."):
            scale = decay ** (n_layers + 1)
        else:
            scale = decay ** n_layers
        no_decay = p.ndim < 2 or "layer_norm" in name or name == "masked_spec_embed" or name.endswith("log_scale")
        groups.setdefault((scale, no_decay), []).append(p)
    out = []
    for (scale, no_decay), params in sorted(groups.items(), key=lambda kv: kv[0]):
        group: dict[str, Any] = {"params": params, "lr": lr * scale}
        if no_decay:
            group["weight_decay"] = 0.0
        elif weight_decay is not None:
            group["weight_decay"] = weight_decay
        out.append(group)
    return out


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
        train_labels = labels[self.rows]
        if task in ("multi_label", "binary") and self.opts.pos_weight:
            pos = np.nansum(train_labels == 1, axis=0)
            neg = np.nansum(train_labels == 0, axis=0)
            self.pos_weight = torch.tensor(neg / np.maximum(pos, 1), dtype=torch.float32)
        if task == "multi_class" and self.opts.class_weights:
            classes = num_outputs(task, labels)
            counts = np.bincount(train_labels[:, 0][np.isfinite(train_labels[:, 0])].astype(int), minlength=classes)
            self.class_weight = torch.tensor(len(train_labels) / (classes * np.maximum(counts, 1)), dtype=torch.float32)
        self.module = self.model
        self.dataset = StoreWindows(self.store, crop=self.opts.crop, labels=True, seed=self.seed)

    def parameter_groups(self, model: HubertECG, lr: float) -> list[dict[str, Any]]:
        return layerwise_groups(model, lr, self.opts.layer_decay, self.opts.head_lr_mult)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        task, kind = self.opts.task, self.opts.loss
        if task == "multi_label":
            known = torch.isfinite(labels)
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            per = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(labels), reduction="none",
                                                     pos_weight=pos_weight)
            return (per * known).sum() / known.sum().clamp(min=1)
        if task == "binary":
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            return F.binary_cross_entropy_with_logits(logits.float()[:, 0], labels[:, 0], pos_weight=pos_weight)
        if task == "multi_class":
            weight = None if self.class_weight is None else self.class_weight.to(logits.device)
            return F.cross_entropy(logits.float(), labels[:, 0].long(), weight=weight)
        if kind == "huber":
            return F.huber_loss(logits.float(), labels)
        return F.mse_loss(logits.float(), labels)

    def training_loss(self, module: nn.Module, batch: dict[str, torch.Tensor], step: int,
                      env: DistEnv) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = None if batch.get("full", False) else batch["attention_mask"]
        out = module(batch["input"], mask)
        return self.loss(out.logits, batch["labels"]), {}

    def score(self, model: HubertECG, rows: np.ndarray, device: torch.device, autocast: Any) -> Scores:
        return score_rows(model, self.store, rows, task=self.opts.task, device=device, autocast=autocast,
                          windows=self.opts.eval_windows, n_crops=self.opts.eval_crops,
                          aggregate=self.opts.eval_aggregate, batch_size=self.opts.val_batch, seed=self.seed,
                          loss_fn=self.loss)

    @torch.no_grad()
    def validate(self, model: HubertECG, device: torch.device, autocast: Any) -> dict[str, float]:
        from .metrics import compute_metrics

        scores = self.score(model, self.val_rows, device, autocast)
        result = compute_metrics(self.opts.task, targets_for_metrics(self.opts.task, scores.labels),
                                 scores.probabilities)
        metrics = {"loss": scores.loss if scores.loss is not None else float("nan")}
        metrics.update({k: float(v) for k, v in result.macro.items()})
        metrics.update({k: float(v) for k, v in result.overall.items()})
        return metrics


def tune_and_store_thresholds(objective: FinetuneObjective, model_dir: Path, device: torch.device,
                              autocast: Any) -> list[float] | None:
    """Max-F1 thresholds on the validation rows, written into the saved model's config."""
    from .checkpoint import load_model
    from .metrics import tune_thresholds

    if objective.opts.task not in ("multi_label", "binary"):
        return None
    model = load_model(model_dir, device=device)
    scores = objective.score(model, objective.val_rows, device, autocast)
    thresholds = tune_thresholds(targets_for_metrics(objective.opts.task, scores.labels),
                                 scores.probabilities).tolist()
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text())
    config["info"]["thresholds"] = [float(t) for t in np.atleast_1d(thresholds)]
    from .atomic import atomic_write_json
    atomic_write_json(config_file, config)
    return config["info"]["thresholds"]


def run_finetune(store_path: str, cfg: "TrainConfig", opts: FinetuneOptions, *, init: str | None = None,
                 random_init_size: str | None = None, keep_head: bool = False, train_split: str = "train",
                 val_split: str = "val", val_fraction: float = 0.1, lp_then_ft_steps: int = 0,
                 gradient_checkpointing: bool = False,
                 model_overrides: dict[str, Any] | None = None) -> "TrainResult":
    """Fine-tune on a labelled store; keeps ``best`` and ``last``, tunes thresholds on validation."""
    from .checkpoint import load_model
    from .model import create_model
    from .pretraining.objective import default_val_rows
    from .training import autocast_context, train, _precision
    from .distributed import default_device, init_distributed

    store = ECGStore(store_path)
    if store.labels is None:
        raise ValueError(f"{store.path}: the store has no labels; prepare it with --labels")
    if (init is None) == (random_init_size is None):
        raise ValueError("give exactly one of --init CHECKPOINT or --random-init --size SIZE")
    if init is not None and model_overrides:
        raise ValueError("--model-overrides changes the architecture of a fresh model; it needs --random-init")
    # Random weights (a fresh model, a new head) must come from --seed, not from the process: the same
    # command then gives the same model.
    torch.manual_seed(cfg.seed)
    if init is not None:
        model = load_model(init)
    else:
        model = create_model(random_init_size, input_rate_hz=int(round(store.fs)), **(model_overrides or {}))
    spec = store.spec.to_dict()
    if model.info.preprocessing is not None and model.info.preprocessing != spec:
        import warnings
        warnings.warn("the store's preprocessing differs from the checkpoint's; the fine-tuned model "
                      "records the store's")
    train_rows, val_rows = default_val_rows(store, val_split, val_fraction, cfg.seed)
    if train_split and train_split != "train":
        train_rows = store.rows(train_split)
    label_names = list(store.label_names)
    n_out = num_outputs(opts.task, store.labels)
    if opts.task in ("multi_class", "binary") and len(label_names) == 1:
        label_names = [f"{label_names[0]}={c}" for c in range(n_out)] if opts.task == "multi_class" else label_names
    model = prepare_model(model, opts, n_out, label_names, keep_head=keep_head)
    model.update_config(gradient_checkpointing=gradient_checkpointing)
    model.info.preprocessing = spec
    model.info.source = (f"fine-tuned on {store.path} from {init}" if init
                         else f"trained from scratch ({random_init_size}) on {store.path}")
    cfg.monitor = opts.monitor
    cfg.monitor_mode = MONITOR_MODES.get(opts.monitor, "max")
    run_dir = Path(cfg.out_dir)
    if lp_then_ft_steps > 0 and not opts.linear_probe:
        lp_opts = dataclasses.replace(opts, linear_probe=True)
        lp_cfg = dataclasses.replace(cfg, out_dir=str(run_dir / "linear-probe"), max_steps=lp_then_ft_steps)
        lp_model = prepare_model(model, lp_opts, n_out, label_names, keep_head=True)
        lp_result = train(lp_model, FinetuneObjective(lp_model, store, lp_opts, train_rows, val_rows, cfg.seed),
                          lp_cfg)
        model = load_model(lp_result.best_dir or lp_result.last_dir)
        model = prepare_model(model, opts, n_out, label_names, keep_head=True)
        model.info.preprocessing = spec
    objective = FinetuneObjective(model, store, opts, train_rows, val_rows, cfg.seed, cfg.weight_decay)
    result = train(model, objective, cfg)
    env = init_distributed(cfg.device)
    if env.is_main:
        device = default_device(env, cfg.device)
        autocast = autocast_context(device, _precision(cfg, device))
        for directory in (result.best_dir, result.last_dir):
            if directory is not None and directory.exists():
                tune_and_store_thresholds(objective, directory, device, autocast)
    return result
