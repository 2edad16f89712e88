"""Training commands: ``features``, ``cluster``, ``label``, ``pretrain``, ``pretrain-loop``, ``finetune``."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import TASKS
from ..metrics import MONITORS, monitor_mode
from . import (
    add_command,
    add_device_option,
    fraction,
    non_negative_float,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    register,
    unit_interval,
)

# Loop options shared by pretrain and finetune: (flag, type, default, help). Defaults of None are
# filled from a recipe (finetune --recipe) or from the per-command defaults below.
_LOOP_OPTIONS: list[tuple[str, Any, str]] = [
    ("--max-steps", positive_int, "optimizer steps"),
    ("--batch-size", positive_int, "global batch size (all processes together)"),
    ("--grad-accum", positive_int, "micro-batches per optimizer step"),
    ("--lr", positive_float, "peak learning rate"),
    ("--weight-decay", non_negative_float, "AdamW weight decay"),
    ("--warmup", open_fraction, "warm-up fraction of the steps (linear warm-up, then linear decay)"),
    ("--clip-grad", positive_float, "clip the gradient norm at this value"),
    ("--val-every", positive_int, "validate every N optimizer steps"),
    ("--patience", positive_int, "stop after N validations without improvement"),
    ("--workers", non_negative_int, "data-loader worker processes"),
    ("--seed", non_negative_int, "random seed"),
]
_LOOP_DEFAULTS: dict[str, dict[str, int | float | None]] = {
    "pretrain": dict(
        max_steps=1000,
        batch_size=64,
        grad_accum=1,
        lr=5e-5,
        weight_decay=0.01,
        warmup=0.08,
        clip_grad=None,
        val_every=200,
        patience=None,
        workers=2,
        seed=0,
    ),
    "finetune": dict(
        max_steps=2000,
        batch_size=64,
        grad_accum=1,
        lr=5e-5,
        weight_decay=0.01,
        warmup=0.08,
        clip_grad=1.0,
        val_every=200,
        patience=8,
        workers=2,
        seed=0,
    ),
}


def _add_loop_args(p: argparse.ArgumentParser, kind: str) -> None:
    g = p.add_argument_group("training loop")
    for flag, type_, help_ in _LOOP_OPTIONS:
        default = _LOOP_DEFAULTS[kind][flag[2:].replace("-", "_")]
        suffix = "recipe value, else " if kind == "finetune" else ""
        shown = "off" if default is None else default
        g.add_argument(flag, type=type_, default=argparse.SUPPRESS, help=f"{help_} (default: {suffix}{shown})")
    # Defaults of None: an option not given keeps the value of --config (then the recipe, then the default).
    g.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="auto = bf16 autocast on GPUs with native bf16 (compute capability >= 8.0), fp16 with "
        "loss scaling on older GPUs, float32 on CPU; fp32 also switches TF32 off (default: auto)",
    )
    g.add_argument(
        "--device",
        help="auto, cpu, cuda, cuda:1 ... (default: auto; under torchrun each process "
        "uses cuda:LOCAL_RANK, and cuda:N is refused)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile each transformer layer on its own (no recompiles with layerdrop)",
    )
    g.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute layer activations in the backward pass (large batches in less memory)",
    )
    g.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms (exact resume on CPU)"
    )
    g.add_argument("--logger", help="tensorboard, wandb, mlflow, none (comma-separated; default: tensorboard)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_run_record_args(p)


def _add_run_record_args(p: argparse.ArgumentParser) -> None:
    """--config, --print-config and the --overwrite/--resume choice for a run folder that holds a run."""
    r = p.add_argument_group("run record (run.json in --out)")
    r.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a JSON/YAML file: a run.json, or what --print-config prints; "
        "options given on the command line override it",
    )
    r.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved settings (JSON, readable by --config) and exit",
    )
    mode = r.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="--out holds a run with other settings: move it aside (OUT.old-TIMESTAMP) and start over",
    )
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with safe changes only (max-steps, patience, val-every, "
        "logger, workers); any other change is refused",
    )


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


#: Loop option dest -> TrainConfig field (the others have the same name).
_LOOP_FIELDS = {"warmup": "warmup_fraction", "clip_grad": "clip_grad_norm", "workers": "num_workers"}


def _given(args: argparse.Namespace, dest: str) -> Any:
    """The value of an option given on the command line, else None (options not given default to None)."""
    return getattr(args, dest, None)


def _train_config(
    args: argparse.Namespace, kind: str, recipe: dict[str, Any] | None = None, config: dict[str, Any] | None = None
) -> Any:
    """TrainConfig from, in increasing precedence: defaults of ``kind``, the recipe, --config, the command line."""
    from ..training import TrainConfig

    recipe, config = recipe or {}, config or {}
    values: dict[str, Any] = {"eps": 1e-9 if kind == "pretrain" else 1e-8}
    for flag, _, _ in _LOOP_OPTIONS:
        key = flag[2:].replace("-", "_")
        values[_LOOP_FIELDS.get(key, key)] = recipe.get(key, _LOOP_DEFAULTS[kind][key])
    if config:
        from ..runs import settings_from_config

        values.update(settings_from_config("train", TrainConfig, config, args.config))
    for flag, _, _ in _LOOP_OPTIONS:
        key = flag[2:].replace("-", "_")
        if _given(args, key) is not None:
            values[_LOOP_FIELDS.get(key, key)] = _given(args, key)
    for key in ("precision", "device", "compile", "deterministic", "logger"):
        if _given(args, key) is not None:
            values[key] = _given(args, key)
    if args.quiet:
        values["progress"] = False
    if args.out is not None:
        values["out_dir"] = args.out
    values.setdefault("out_dir", None)
    return TrainConfig(**values)


def _load_config(args: argparse.Namespace, sections: tuple[str, ...]) -> dict[str, Any]:
    """The --config settings (empty without --config); unknown sections are a one-line error."""
    if not args.config:
        return {}
    from ..runs import load_config_file

    config = load_config_file(args.config)
    unknown = sorted(set(config) - set(sections))
    if unknown:
        raise ValueError(f"{args.config}: unknown section(s) {', '.join(unknown)} (expected {', '.join(sections)})")
    return config


def _merge(cls: type, config: dict[str, Any], section: str, source: str | None, overrides: dict[str, Any]) -> Any:
    """Dataclass ``cls`` from its defaults, then ``config[section]``, then ``overrides`` that are not None."""
    from ..runs import settings_from_config

    values = settings_from_config(section, cls, config, source or "--config") if config else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def _print_config(settings: dict[str, Any]) -> None:
    import json

    print(json.dumps(settings, indent=2))


# ---------------------------------------------------------------------------------------------
def _cmd_features(args: argparse.Namespace) -> None:
    from ..distributed import init_distributed
    from ..pretraining.targets import dump_features
    from ..runtime import resolve_device
    from ..store import ECGStore

    env = init_distributed(args.device)
    # cuda:{LOCAL_RANK} under torchrun: a bare "cuda" would put every rank's model on GPU 0.
    device = str(resolve_device(args.device, local_rank=env.local_rank))
    out = dump_features(
        ECGStore(args.store),
        args.out,
        kind=args.kind,
        checkpoint=args.checkpoint,
        layer=args.layer,
        sample_fraction=args.sample_fraction,
        seed=args.seed,
        batch_size=args.batch_size,
        rank=env.rank,
        world_size=env.world_size,
        device=device,
        progress=not args.quiet,
    )
    print(f"features written to {out}")


def _cmd_cluster(args: argparse.Namespace) -> None:
    from ..pretraining.targets import cluster_features

    results = cluster_features(
        args.features,
        args.k,
        args.out,
        normaliser=args.normaliser,
        held_out_fraction=args.held_out,
        seed=args.seed,
        backend=args.backend,
        max_fit_rows=args.max_rows,
        show_progress=not args.quiet,
    )
    for r in results:
        print(
            f"K={r['k']}: {r['path']}  held-out inertia/row {r['inertia_mean']:.4g}, Davies-Bouldin "
            f"{r['davies_bouldin']:.3f}, Calinski-Harabasz {r['calinski_harabasz']:.1f}, "
            f"empty clusters {r['n_empty_clusters']}, largest cluster {r['majority_fraction']:.1%}"
        )


def _cmd_label(args: argparse.Namespace) -> None:
    from ..distributed import init_distributed
    from ..pretraining.targets import label_store
    from ..runtime import resolve_device
    from ..store import ECGStore

    env = init_distributed(args.device)
    device = str(resolve_device(args.device, local_rank=env.local_rank))  # this rank's GPU, never GPU 0 for all
    names = label_store(
        ECGStore(args.store),
        args.kmeans,
        args.name,
        checkpoint=args.checkpoint,
        layer=args.layer,
        batch_size=args.batch_size,
        rank=env.rank,
        world_size=env.world_size,
        device=device,
        progress=not args.quiet,
    )
    print(f"targets written: {names}")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from ..pretraining.objective import PretrainRun, pretrain_settings, run_pretrain

    config = _load_config(args, ("run", "train"))
    overrides = _model_overrides(args.model_overrides)
    if args.gradient_checkpointing:
        overrides = {**(overrides or {}), "gradient_checkpointing": True}
    run = _merge(
        PretrainRun,
        config,
        "run",
        args.config,
        {
            "store": args.store,
            "targets": args.targets,
            "size": args.size,
            "init_from": args.init_from,
            "alpha": args.alpha,
            "mask_prob": args.mask_prob,
            "mask_length": args.mask_length,
            "val_split": args.val_split,
            "model_overrides": overrides,
            "lead_dropout": args.lead_dropout,
        },
    )
    cfg = _train_config(args, "pretrain", config=config)
    if args.print_config:
        _print_config(pretrain_settings(run, cfg))
        return
    for what, missing in (
        ("a store", run.store is None),
        ("--targets", not run.targets),
        ("--out", cfg.out_dir is None),
    ):
        if missing:
            args.parser.error(f"pretrain needs {what} (on the command line or in --config)")
    result = run_pretrain(run.store, run.targets, cfg, **run.kwargs(), overwrite=args.overwrite, resume=args.resume)
    _report_run(result)


def _cmd_pretrain_loop(args: argparse.Namespace) -> None:
    from ..pretraining.loop import run_pretrain_loop

    final = run_pretrain_loop(args.config, dry_run=args.dry_run, overwrite=args.overwrite, resume=args.resume)
    print(f"pre-training loop finished; final model: {final}")


def _report_run(result: Any) -> None:
    s = result.state
    stop = "early stop" if s.stopped_early else "step limit"
    best = f", best {s.best:.4g} at step {s.best_step}" if s.best is not None else ""
    print(f"finished at step {s.step} ({stop}{best}); best model: {result.best_dir}; last: {result.last_dir}")


#: Recipe keys that are FinetuneOptions fields of the same name (``dropout`` sets two fields).
_RECIPE_OPTIONS = (
    "task",
    "head_type",
    "pos_weight",
    "class_weights",
    "layer_decay",
    "head_lr_mult",
    "train_conv_stem",
    "crop",
    "layerdrop",
    "monitor",
    "eval_windows",
    "eval_crops",
    "eval_aggregate",
)
#: Command-line dests that are FinetuneOptions fields of the same name.
_FINETUNE_FLAGS = _RECIPE_OPTIONS + (
    "head_hidden",
    "head_activation",
    "loss",
    "train_last_blocks",
    "linear_probe",
    "attention_dropout",
    "classifier_dropout",
    "lead_dropout",
)


def _finetune_options(args: argparse.Namespace, recipe: dict[str, Any], config: dict[str, Any]) -> Any:
    """FinetuneOptions from defaults < recipe < --config < command line."""
    from ..finetune import FinetuneOptions
    from ..runs import settings_from_config

    values = {k: recipe[k] for k in _RECIPE_OPTIONS if k in recipe}
    if "dropout" in recipe:
        values["hidden_dropout"] = values["activation_dropout"] = recipe["dropout"]
    if config:
        values.update(settings_from_config("finetune", FinetuneOptions, config, args.config))
    values.update({k: _given(args, k) for k in _FINETUNE_FLAGS if _given(args, k) is not None})
    if args.dropout is not None:
        values["hidden_dropout"] = values["activation_dropout"] = args.dropout
    return FinetuneOptions(**values)


def _cmd_finetune(args: argparse.Namespace) -> None:
    from ..finetune import FinetuneRun, finetune_settings, run_finetune
    from ..recipes import load_recipe, resolve_recipe

    config = _load_config(args, ("run", "train", "finetune"))
    run = _merge(
        FinetuneRun,
        config,
        "run",
        args.config,
        {
            "store": args.store,
            "keep_head": args.keep_head,
            "lp_then_ft_steps": args.lp_then_ft,
            "gradient_checkpointing": args.gradient_checkpointing,
            "model_overrides": _model_overrides(args.model_overrides),
        },
    )
    if args.init is not None:
        run.init, run.random_init_size = args.init, None
    elif args.random_init:
        size = args.size or run.random_init_size
        if size is None:
            args.parser.error("--random-init needs --size")
        run.init, run.random_init_size = None, size
    # Recipes give per-size values for the published sizes; other sizes take the small values.
    size = args.size or run.random_init_size
    recipe_size = size if size in ("small", "base", "large") else "small"
    recipe = resolve_recipe(load_recipe(args.recipe), recipe_size) if args.recipe else {}
    opts = _finetune_options(args, recipe, config)
    cfg = _train_config(args, "finetune", recipe, config)
    cfg.monitor, cfg.monitor_mode = opts.monitor, monitor_mode(opts.monitor)  # as run_finetune records them
    if args.print_config:
        _print_config(finetune_settings(run, cfg, opts))
        return
    if run.store is None or cfg.out_dir is None:
        args.parser.error("finetune needs a store and --out (on the command line or in --config)")
    if (run.init is None) == (run.random_init_size is None):
        args.parser.error("give one of --init CHECKPOINT or --random-init --size SIZE (or a --config that does)")
    result = run_finetune(run.store, cfg, opts, **run.kwargs(), overwrite=args.overwrite, resume=args.resume)
    _report_run(result)


@register
def _add(sub: argparse._SubParsersAction) -> None:
    # The order of the calls is the order of `hubert-ecg --help`.
    _add_features(sub)
    _add_cluster(sub)
    _add_label(sub)
    _add_pretrain(sub)
    _add_pretrain_loop(sub)
    _add_finetune(sub)


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "features", "per-token descriptors (hand-made or hidden states of a layer) for k-means", _cmd_features
    )
    p.add_argument("store", help="prepared store (from `hubert-ecg prepare`)")
    p.add_argument(
        "--kind",
        choices=["tf", "mfcc", "tf+mfcc", "hidden"],
        default="tf+mfcc",
        help="16 time-frequency statistics, 13 MFCC, both (29), or hidden states of --layer",
    )
    p.add_argument("--checkpoint", help="model for --kind hidden")
    p.add_argument(
        "--layer", type=non_negative_int, help="hidden-state index: 0 = encoder input, i = output of layer i"
    )
    p.add_argument("--out", required=True, help="features directory (sharded, resumable)")
    p.add_argument("--sample-fraction", type=unit_interval, default=1.0, help="dump only a seeded sample of rows")
    p.add_argument("--batch-size", type=positive_int, default=256, help="store rows per forward pass")
    add_device_option(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the --sample-fraction row sample")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "cluster", "fit k-means on dumped features (one model per K) with quality metrics", _cmd_cluster
    )
    p.add_argument("features", help="features directory from `hubert-ecg features`")
    p.add_argument(
        "--k", type=positive_int, nargs="+", default=[100], help="cluster counts (several = a sweep with a plot)"
    )
    p.add_argument(
        "--out", required=True, help="output folder: k{K}/kmeans.safetensors and quality.json per K, sweep.json, plot"
    )
    p.add_argument(
        "--normaliser",
        default="l2",
        choices=["l2", "standardise", "standardise+l2", "none"],
        help="applied identically when fitting and when labelling",
    )
    p.add_argument("--held-out", type=open_fraction, default=0.1, help="fraction of rows kept for quality metrics")
    p.add_argument(
        "--backend",
        choices=["sklearn", "faiss"],
        default="sklearn",
        help="k-means implementation (faiss: pip install faiss-cpu; much faster on millions of rows)",
    )
    p.add_argument("--max-rows", type=positive_int, help="fit on at most this many token rows")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of k-means++ and the held-out split")
    p.add_argument("--quiet", action="store_true", help="no progress bar over the K values")


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "label", "assign every token its cluster id(s) and store the targets beside the store", _cmd_label
    )
    p.add_argument("store", help="prepared store (from `hubert-ecg prepare`)")
    p.add_argument("--kmeans", nargs="+", required=True, help="k-means model(s); several give several codebooks")
    p.add_argument("--name", default="targets", help="targets name inside the store")
    p.add_argument("--checkpoint", help="model for hidden-state features (when the k-means was fit on them)")
    p.add_argument(
        "--layer",
        type=non_negative_int,
        help="hidden-state index the k-means was fit on (features --kind hidden --layer)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="store rows per forward pass")
    add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "pretrain", "masked-prediction pre-training on k-means targets", _cmd_pretrain)
    p.set_defaults(parser=p)
    p.add_argument("store", nargs="?", help="prepared store (from `hubert-ecg prepare`; or from --config)")
    p.add_argument("--targets", nargs="+", help="target names written by `hubert-ecg label` (required)")
    p.add_argument(
        "--size", choices=["tiny", "small", "base", "large"], help="model size for a new model (default: small)"
    )
    p.add_argument("--init-from", help="start from this model (next iteration: fresh codebooks)")
    p.add_argument("--out", help="run directory, required (re-run the same command to resume)")
    p.add_argument("--alpha", type=fraction, help="weight of the masked loss (1 - alpha: unmasked; default 1)")
    p.add_argument("--mask-prob", type=unit_interval, help="span-start probability (default 0.33)")
    p.add_argument("--mask-length", type=positive_int, help="span length in tokens (default 1)")
    p.add_argument(
        "--lead-dropout",
        type=open_fraction,
        metavar="P",
        help="zero each input lead with probability P (at least one kept); the targets stay 12-lead",
    )
    p.add_argument("--val-split", help="store split used for validation (default: val)")
    p.add_argument(
        "--model-overrides",
        metavar="JSON",
        help="change model config fields of the named size, e.g. '{\"num_hidden_layers\": 4}'",
    )
    _add_loop_args(p, "pretrain")


def _add_pretrain_loop(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "pretrain-loop",
        "the whole HuBERT loop from one YAML/TOML file, resumable stage by stage",
        _cmd_pretrain_loop,
    )
    p.add_argument(
        "config", help="loop config, YAML or TOML (a commented template: `hubert-ecg config pretrain-loop > loop.yaml`)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the stages and whether each is done")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="the config's out folder holds a loop with another config: move it aside (OUT.old-TIMESTAMP, "
        "with the targets it wrote into the store) and start over",
    )
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the loop in out with safe changes only (max_steps, patience, val_every, save_every, "
        "log_every, logger, num_workers in an iteration's train:); any other change is refused",
    )


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "finetune", "fine-tune on labelled data (multi-label, multi-class, binary, regression)", _cmd_finetune
    )
    p.set_defaults(parser=p)
    p.add_argument("store", nargs="?", help="labelled store from `hubert-ecg prepare --labels` (or from --config)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--init", help="checkpoint to start from (our dir, HF dir, .pt, HF id)")
    src.add_argument("--random-init", action="store_true", help="train from scratch (needs --size)")
    p.add_argument("--size", choices=["tiny", "small", "base", "large"], help="model size for --random-init")
    p.add_argument(
        "--model-overrides",
        metavar="JSON",
        help="with --random-init: change model config fields of the named size (JSON object)",
    )
    p.add_argument("--out", help="run directory, required; keeps best/, last/ and run.json")
    from .config_cmds import recipe_names

    p.add_argument(
        "--recipe",
        metavar="NAME|FILE.yaml",
        help=f"published recipe ({', '.join(recipe_names())}) or your YAML file (template: `hubert-ecg "
        "config finetune`); flags override its values",
    )
    p.add_argument("--task", choices=list(TASKS), help="default: multi_label")
    _add_finetune_head_args(p)
    _add_finetune_trainable_args(p)
    _add_finetune_regularisation_args(p)
    _add_finetune_validation_args(p)
    _add_loop_args(p, "finetune")


def _add_finetune_head_args(p: argparse.ArgumentParser) -> None:
    """Head and loss options of ``finetune``."""
    p.add_argument(
        "--head-type",
        choices=["linear", "mlp", "cosine"],
        help="classification head: linear, MLP (--head-hidden), or cosine similarity to label embeddings "
        "(default: linear)",
    )
    p.add_argument("--head-hidden", type=positive_int, help="MLP head width")
    p.add_argument("--head-activation", choices=["tanh", "relu", "gelu", "sigmoid"], help="MLP head (default: tanh)")
    p.add_argument(
        "--keep-head", action="store_true", default=None, help="keep the checkpoint's head when the label count matches"
    )
    p.add_argument("--loss", choices=["auto", "bce", "ce", "mse", "huber"], help="default: auto (the task's loss)")
    p.add_argument(
        "--pos-weight",
        dest="pos_weight",
        action="store_true",
        default=None,
        help="BCE pos_weight = negatives/positives from the training rows",
    )
    p.add_argument("--no-pos-weight", dest="pos_weight", action="store_false", help="unweighted BCE")
    p.add_argument("--class-weights", action="store_true", default=None, help="weighted cross-entropy by class index")


def _add_finetune_trainable_args(p: argparse.ArgumentParser) -> None:
    """What trains, at which learning rate, and the training crop."""
    p.add_argument("--layer-decay", type=unit_interval, help="layer-wise LR decay factor (1 = off; default 0.8)")
    p.add_argument("--head-lr-mult", type=positive_float, help="head LR = lr x this (default 10)")
    p.add_argument("--train-last-blocks", type=non_negative_int, help="train only the last N transformer blocks")
    p.add_argument("--train-conv-stem", action="store_true", default=None, help="also train the conv stem")
    p.add_argument("--linear-probe", action="store_true", default=None, help="train the head only")
    p.add_argument(
        "--lp-then-ft", type=non_negative_int, metavar="STEPS", help="linear probe for STEPS, then fine-tune"
    )
    p.add_argument("--crop", choices=["random", "first"], help="training crop of 5 s windows")


def _add_finetune_regularisation_args(p: argparse.ArgumentParser) -> None:
    """Dropout options of ``finetune`` (each also settable by the recipe or --config)."""
    p.add_argument("--dropout", type=open_fraction, help="hidden and activation dropout")
    p.add_argument("--attention-dropout", type=open_fraction, help="dropout on attention weights")
    p.add_argument("--classifier-dropout", type=open_fraction, help="dropout before the head")
    p.add_argument(
        "--layerdrop",
        type=open_fraction,
        help="probability of skipping a transformer layer per step (recipe value, else 0)",
    )
    p.add_argument(
        "--lead-dropout",
        type=open_fraction,
        metavar="P",
        help="zero each lead of a training window with probability P (at least one kept): tolerance to "
        "missing leads; check with `evaluate --leads limb,I`",
    )


def _add_finetune_validation_args(p: argparse.ArgumentParser) -> None:
    """What best/ and early stopping watch, and how validation records are windowed."""
    p.add_argument(
        "--monitor",
        choices=list(MONITORS),
        help="validation metric for best/ and early stopping (default: the task's: auroc; mae for regression)",
    )
    p.add_argument("--eval-windows", choices=["first", "random", "sliding"], help="validation windows (TTA)")
    p.add_argument("--eval-crops", type=positive_int, help="random crops per record for --eval-windows random")
    p.add_argument("--eval-aggregate", choices=["mean", "max"], help="combine a record's validation windows")
