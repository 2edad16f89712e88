"""Training commands: ``features``, ``cluster``, ``label``, ``pretrain``, ``pretrain-loop``, ``finetune``."""

from __future__ import annotations

import argparse
from typing import Any

from . import add_command, register

# Loop options shared by pretrain and finetune: (flag, type, default, help). Defaults of None are
# filled from a recipe (finetune --recipe) or from the per-command defaults below.
_LOOP_OPTIONS: list[tuple[str, Any, str]] = [
    ("--max-steps", int, "optimizer steps"),
    ("--batch-size", int, "global batch size (all processes together)"),
    ("--grad-accum", int, "micro-batches per optimizer step"),
    ("--lr", float, "peak learning rate"),
    ("--weight-decay", float, "AdamW weight decay"),
    ("--warmup", float, "warm-up fraction of the steps (linear warm-up, then linear decay)"),
    ("--clip-grad", float, "clip the gradient norm at this value"),
    ("--val-every", int, "validate every N optimizer steps"),
    ("--patience", int, "stop after N validations without improvement"),
    ("--workers", int, "data-loader worker processes"),
    ("--seed", int, "random seed"),
]
_LOOP_DEFAULTS = {"pretrain": dict(max_steps=1000, batch_size=64, grad_accum=1, lr=5e-5, weight_decay=0.01, warmup=0.08,
                                   clip_grad=None, val_every=200, patience=None, workers=2, seed=0),
                  "finetune": dict(max_steps=2000, batch_size=64, grad_accum=1, lr=5e-5, weight_decay=0.01, warmup=0.08,
                                   clip_grad=1.0, val_every=200, patience=8, workers=2, seed=0)}


def _add_loop_args(p: argparse.ArgumentParser, kind: str) -> None:
    g = p.add_argument_group("training loop")
    for flag, type_, help_ in _LOOP_OPTIONS:
        default = _LOOP_DEFAULTS[kind][flag[2:].replace("-", "_")]
        suffix = "recipe value, else " if kind == "finetune" else ""
        shown = "off" if default is None else default
        g.add_argument(flag, type=type_, default=argparse.SUPPRESS, help=f"{help_} (default: {suffix}{shown})")
    g.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="auto = bf16 autocast on GPU, float32 on CPU")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute layer activations in the backward pass (large batches in less memory)")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume on CPU)")
    g.add_argument("--logger", default="tensorboard", help="tensorboard, wandb, mlflow, none (comma-separated)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_overrides(text: str | None) -> dict[str, Any] | None:
    """``--model-overrides '{"hidden_size": 128, "num_hidden_layers": 4}'`` -> checked ModelConfig fields."""
    if not text:
        return None
    import dataclasses
    import json

    from ..config import ModelConfig

    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-overrides is not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(overrides, dict):
        raise ValueError("--model-overrides must be a JSON object of model config fields")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"--model-overrides: unknown model config fields {', '.join(unknown)}")
    return overrides


def _train_config(args: argparse.Namespace, kind: str, recipe: dict[str, Any] | None = None) -> Any:
    from ..training import TrainConfig

    recipe = recipe or {}
    values = {}
    for flag, _, _ in _LOOP_OPTIONS:
        key = flag[2:].replace("-", "_")
        given = getattr(args, key, None)
        values[key] = given if given is not None else recipe.get(key, _LOOP_DEFAULTS[kind][key])
    return TrainConfig(out_dir=args.out, max_steps=values["max_steps"], batch_size=values["batch_size"],
                       grad_accum=values["grad_accum"], lr=values["lr"], weight_decay=values["weight_decay"],
                       warmup_fraction=values["warmup"], clip_grad_norm=values["clip_grad"],
                       val_every=values["val_every"], patience=values["patience"], num_workers=values["workers"],
                       seed=values["seed"], precision=args.precision, device=args.device, compile=args.compile,
                       deterministic=args.deterministic, logger=args.logger, progress=not args.quiet,
                       eps=1e-9 if kind == "pretrain" else 1e-8)


# ---------------------------------------------------------------------------------------------
def _cmd_features(args: argparse.Namespace) -> None:
    from ..distributed import init_distributed
    from ..store import ECGStore
    from ..pretraining.targets import dump_features

    env = init_distributed(args.device)
    out = dump_features(ECGStore(args.store), args.out, kind=args.kind, checkpoint=args.checkpoint, layer=args.layer,
                        sample_fraction=args.sample_fraction, seed=args.seed, batch_size=args.batch_size,
                        rank=env.rank, world_size=env.world_size, device=args.device if args.device != "auto" else
                        ("cuda" if __import__("torch").cuda.is_available() else "cpu"), progress=not args.quiet)
    print(f"features written to {out}")


def _cmd_cluster(args: argparse.Namespace) -> None:
    from ..pretraining.targets import cluster_features

    results = cluster_features(args.features, args.k, args.out, normaliser=args.normaliser,
                               held_out_fraction=args.held_out, seed=args.seed, backend=args.backend,
                               max_fit_rows=args.max_rows)
    for r in results:
        print(f"K={r['k']}: {r['path']}  held-out inertia/row {r['inertia_mean']:.4g}, Davies-Bouldin "
              f"{r['davies_bouldin']:.3f}, Calinski-Harabasz {r['calinski_harabasz']:.1f}, "
              f"empty clusters {r['n_empty_clusters']}, largest cluster {r['majority_fraction']:.1%}")


def _cmd_label(args: argparse.Namespace) -> None:
    import torch

    from ..distributed import init_distributed
    from ..store import ECGStore
    from ..pretraining.targets import label_store

    env = init_distributed(args.device)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    names = label_store(ECGStore(args.store), args.kmeans, args.name, checkpoint=args.checkpoint, layer=args.layer,
                        batch_size=args.batch_size, rank=env.rank, world_size=env.world_size, device=device,
                        progress=not args.quiet)
    print(f"targets written: {names}")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from ..pretraining.objective import run_pretrain

    cfg = _train_config(args, "pretrain")
    result = run_pretrain(args.store, args.targets, cfg, size=args.size, init_from=args.init_from, alpha=args.alpha,
                          mask_prob=args.mask_prob, mask_length=args.mask_length, val_split=args.val_split,
                          model_overrides={**(_model_overrides(args.model_overrides) or {}),
                                           **({"gradient_checkpointing": True} if args.gradient_checkpointing else {})})
    _report_run(result)


def _cmd_pretrain_loop(args: argparse.Namespace) -> None:
    from ..pretraining.loop import run_pretrain_loop

    final = run_pretrain_loop(args.config, dry_run=args.dry_run)
    print(f"pre-training loop finished; final model: {final}")


def _report_run(result: Any) -> None:
    s = result.state
    stop = "early stop" if s.stopped_early else "step limit"
    best = f", best {s.best:.4g} at step {s.best_step}" if s.best is not None else ""
    print(f"finished at step {s.step} ({stop}{best}); best model: {result.best_dir}; last: {result.last_dir}")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from ..finetune import FinetuneOptions, run_finetune
    from ..recipes import load_recipe, resolve_recipe

    # Recipes give per-size values for the published sizes; other sizes take the small values.
    recipe_size = args.size if args.size in ("small", "base", "large") else "small"
    recipe = resolve_recipe(load_recipe(args.recipe), recipe_size) if args.recipe else {}
    layerdrop = args.layerdrop if args.layerdrop is not None else recipe.get("layerdrop", 0.0)

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else recipe.get(name, default)

    opts = FinetuneOptions(
        task=pick("task", "multi_label"), head_type=pick("head_type", "linear"), head_hidden=args.head_hidden,
        head_activation=args.head_activation, loss=args.loss, pos_weight=pick("pos_weight", True),
        class_weights=pick("class_weights", False), layer_decay=pick("layer_decay", 0.8),
        head_lr_mult=pick("head_lr_mult", 10.0), train_last_blocks=args.train_last_blocks,
        train_conv_stem=pick("train_conv_stem", False), linear_probe=args.linear_probe, crop=pick("crop", "random"),
        hidden_dropout=pick("dropout", None), attention_dropout=args.attention_dropout,
        activation_dropout=pick("dropout", None),
        layerdrop=layerdrop, classifier_dropout=args.classifier_dropout, monitor=pick("monitor", "auroc"),
        eval_windows=pick("eval_windows", "first"), eval_crops=pick("eval_crops", 3),
        eval_aggregate=pick("eval_aggregate", "mean"))
    cfg = _train_config(args, "finetune", recipe)
    result = run_finetune(args.store, cfg, opts, init=args.init, random_init_size=args.size if args.random_init else None,
                          keep_head=args.keep_head, lp_then_ft_steps=args.lp_then_ft or 0,
                          gradient_checkpointing=args.gradient_checkpointing,
                          model_overrides=_model_overrides(args.model_overrides))
    _report_run(result)


@register
def _add(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "features", "per-token descriptors (hand-made or hidden states of a layer) for k-means",
                    _cmd_features)
    p.add_argument("store", help="prepared store (from `hubert-ecg prepare`)")
    p.add_argument("--kind", choices=["tf", "mfcc", "tf+mfcc", "hidden"], default="tf+mfcc",
                   help="16 time-frequency statistics, 13 MFCC, both (29), or hidden states of --layer")
    p.add_argument("--checkpoint", help="model for --kind hidden")
    p.add_argument("--layer", type=int, help="hidden-state index: 0 = encoder input, i = output of layer i")
    p.add_argument("--out", required=True, help="features directory (sharded, resumable)")
    p.add_argument("--sample-fraction", type=float, default=1.0, help="dump only a seeded sample of rows")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")

    p = add_command(sub, "cluster", "fit k-means on dumped features (one model per K) with quality metrics",
                    _cmd_cluster)
    p.add_argument("features", help="features directory from `hubert-ecg features`")
    p.add_argument("--k", type=int, nargs="+", default=[100], help="cluster counts (several = a sweep with a plot)")
    p.add_argument("--out", required=True)
    p.add_argument("--normaliser", default="l2", choices=["l2", "standardise", "standardise+l2", "none"],
                   help="applied identically when fitting and when labelling")
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of rows kept for quality metrics")
    p.add_argument("--backend", choices=["sklearn", "faiss"], default="sklearn")
    p.add_argument("--max-rows", type=int, help="fit on at most this many token rows")
    p.add_argument("--seed", type=int, default=0)

    p = add_command(sub, "label", "assign every token its cluster id(s) and store the targets beside the store",
                    _cmd_label)
    p.add_argument("store", help="prepared store (from `hubert-ecg prepare`)")
    p.add_argument("--kmeans", nargs="+", required=True, help="k-means model(s); several give several codebooks")
    p.add_argument("--name", default="targets", help="targets name inside the store")
    p.add_argument("--checkpoint", help="model for hidden-state features (when the k-means was fit on them)")
    p.add_argument("--layer", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")

    p = add_command(sub, "pretrain", "masked-prediction pre-training on k-means targets", _cmd_pretrain)
    p.add_argument("store", help="prepared store (from `hubert-ecg prepare`)")
    p.add_argument("--targets", nargs="+", required=True, help="target names written by `hubert-ecg label`")
    p.add_argument("--size", default="small", choices=["tiny", "small", "base", "large"],
                   help="model size for a new model (default: small)")
    p.add_argument("--init-from", help="start from this model (next iteration: fresh codebooks)")
    p.add_argument("--out", required=True, help="run directory (re-run the same command to resume)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the masked loss (1 - alpha: unmasked)")
    p.add_argument("--mask-prob", type=float, help="span-start probability (default 0.33)")
    p.add_argument("--mask-length", type=int, help="span length in tokens (default 1)")
    p.add_argument("--val-split", default="val", help="store split used for validation")
    p.add_argument("--model-overrides", metavar="JSON",
                   help='change model config fields of the named size, e.g. \'{"num_hidden_layers": 4}\'')
    _add_loop_args(p, "pretrain")

    p = add_command(sub, "pretrain-loop", "the whole HuBERT loop from one YAML/TOML file, resumable stage by stage",
                    _cmd_pretrain_loop)
    p.add_argument("config", help="loop config (see configs/pretrain-loop.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and whether each is done")

    p = add_command(sub, "finetune", "fine-tune on labelled data (multi-label, multi-class, binary, regression)",
                    _cmd_finetune)
    p.add_argument("store", help="labelled store from `hubert-ecg prepare --labels`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", help="checkpoint to start from (our dir, HF dir, .pt, HF id)")
    src.add_argument("--random-init", action="store_true", help="train from scratch (needs --size)")
    p.add_argument("--size", choices=["tiny", "small", "base", "large"], help="model size for --random-init")
    p.add_argument("--model-overrides", metavar="JSON",
                   help="with --random-init: change model config fields of the named size (JSON object)")
    p.add_argument("--out", required=True, help="run directory; keeps best/ and last/")
    p.add_argument("--recipe", help="published recipe name (see docs/REFERENCE_MAPPING.md); flags override it")
    p.add_argument("--task", choices=["multi_label", "multi_class", "binary", "regression"])
    p.add_argument("--head-type", choices=["linear", "mlp", "cosine"])
    p.add_argument("--head-hidden", type=int, help="MLP head width")
    p.add_argument("--head-activation", default="tanh", choices=["tanh", "relu", "gelu", "sigmoid"])
    p.add_argument("--keep-head", action="store_true", help="keep the checkpoint's head when the label count matches")
    p.add_argument("--loss", default="auto", choices=["auto", "bce", "ce", "mse", "huber"])
    p.add_argument("--pos-weight", dest="pos_weight", action="store_true", default=None,
                   help="BCE pos_weight = negatives/positives from the training rows")
    p.add_argument("--no-pos-weight", dest="pos_weight", action="store_false")
    p.add_argument("--class-weights", action="store_true", default=None, help="weighted cross-entropy by class index")
    p.add_argument("--layer-decay", type=float, help="layer-wise LR decay factor (1 = off; default 0.8)")
    p.add_argument("--head-lr-mult", type=float, help="head LR = lr x this (default 10)")
    p.add_argument("--train-last-blocks", type=int, help="train only the last N transformer blocks")
    p.add_argument("--train-conv-stem", action="store_true", default=None, help="also train the conv stem")
    p.add_argument("--linear-probe", action="store_true", help="train the head only")
    p.add_argument("--lp-then-ft", type=int, metavar="STEPS", help="linear probe for STEPS, then fine-tune")
    p.add_argument("--crop", choices=["random", "first"], help="training crop of 5 s windows")
    p.add_argument("--dropout", type=float, help="hidden and activation dropout")
    p.add_argument("--attention-dropout", type=float)
    p.add_argument("--classifier-dropout", type=float)
    p.add_argument("--layerdrop", type=float)
    p.add_argument("--monitor", choices=["auroc", "auprc", "f1", "accuracy", "loss", "mae", "r2"],
                   help="validation metric for best/ and early stopping")
    p.add_argument("--eval-windows", choices=["first", "random", "sliding"], help="validation windows (TTA)")
    p.add_argument("--eval-crops", type=int)
    p.add_argument("--eval-aggregate", choices=["mean", "max"])
    _add_loop_args(p, "finetune")
