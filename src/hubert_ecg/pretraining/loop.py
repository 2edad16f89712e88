"""The whole HuBERT loop from one config file: features -> k-means -> labels -> train, iterated.

Iteration 1 clusters hand-made per-token features; iteration n+1 clusters the hidden states of
layer L of iteration n's best model and starts training from it with fresh codebooks. Every stage
is skipped when its outputs are complete and resumes when interrupted, so re-running the same
command after a kill finishes the job. Example config: ``configs/pretrain-loop.yaml``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..store import ECGStore

_ITERATION_KEYS = {"name", "features", "kmeans", "train"}
_TOP_KEYS = {"store", "out", "size", "device", "seed", "iterations", "model"}

# Allowed keys of each section and the type each value must have ("int", "number", "str", "bool",
# "mapping"); a trailing "?" allows null. Range checks: see _RANGES.
_TOP_TYPES = {
    "store": "str",
    "out": "str",
    "size": "str",
    "device": "str",
    "seed": "int",
    "iterations": "list",
    "model": "mapping",
}
_SECTION_TYPES: dict[str, dict[str, str]] = {
    "iteration": {"name": "str", "features": "mapping", "kmeans": "mapping", "train": "mapping"},
    "features": {
        "kind": "str",
        "layer": "int",
        "sample_fraction": "number",
        "batch_size": "int",
        "shard_rows": "int",
        "dtype": "str",
        "mfcc_deltas": "bool",
    },
    "kmeans": {
        "k": "int",
        "normaliser": "str",
        "held_out_fraction": "number",
        "backend": "str",
        "max_fit_rows": "int?",
        "max_held_out_rows": "int",
        "epochs": "int?",
        "fit_batch_size": "int",
        "n_threads": "int?",
    },
    "train": {
        "max_steps": "int",
        "batch_size": "int",
        "grad_accum": "int",
        "lr": "number",
        "weight_decay": "number",
        "betas": "list",
        "eps": "number",
        "warmup_fraction": "number",
        "clip_grad_norm": "number?",
        "precision": "str",
        "val_every": "int",
        "save_every": "int?",
        "patience": "int?",
        "monitor": "str",
        "monitor_mode": "str",
        "min_delta": "number",
        "log_every": "int",
        "num_workers": "int",
        "compile": "bool",
        "deterministic": "bool",
        "logger": "str",
        "progress": "bool",
        "alpha": "number",
        "mask_prob": "number?",
        "mask_length": "int?",
    },
}
# (low, high, inclusive-low) per key: a value outside is refused naming the key.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "seed": (0, float("inf"), True),
    "layer": (0, float("inf"), True),
    "sample_fraction": (0, 1, False),
    "batch_size": (1, float("inf"), True),
    "shard_rows": (1, float("inf"), True),
    "k": (2, float("inf"), True),
    "held_out_fraction": (0, 1, True),
    "max_steps": (1, float("inf"), True),
    "grad_accum": (1, float("inf"), True),
    "lr": (0, float("inf"), False),
    "weight_decay": (0, float("inf"), True),
    "warmup_fraction": (0, 1, True),
    "val_every": (1, float("inf"), True),
    "patience": (1, float("inf"), True),
    "num_workers": (0, float("inf"), True),
    "alpha": (0, 1, True),
    "mask_prob": (0, 1, False),
    "mask_length": (1, float("inf"), True),
    "log_every": (1, float("inf"), True),
    "clip_grad_norm": (0, float("inf"), False),
}
_CHOICES = {
    "kind": ("tf", "mfcc", "tf+mfcc", "hidden"),
    "normaliser": ("l2", "standardise", "standardise+l2", "none"),
    "backend": ("sklearn", "faiss"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "size": ("tiny", "small", "base", "large"),
    "monitor_mode": ("min", "max"),
}


def _train_types() -> dict[str, str]:
    """Keys of a ``train:`` section: every TrainConfig field (but those the loop sets) plus the objective's."""
    import dataclasses

    from ..training import TrainConfig

    known = _SECTION_TYPES["train"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"out_dir", "seed", "device"}
    return {name: known.get(name, "any") for name in fields | {"alpha", "mask_prob", "mask_length"}}


class ConfigError(ValueError):
    """A loop config that cannot be used; the message names the file, the key and the problem."""


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind.endswith("?"):
        if value is None:
            return True
        kind = kind[:-1]
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "mapping": dict, "list": list}[kind])


_KIND_WORDS = {
    "int": "an integer",
    "number": "a number",
    "str": "a string",
    "bool": "true or false",
    "mapping": "a mapping (key: value)",
    "list": "a list",
}


def _check_section(path: Path, where: str, values: Any, types: dict[str, str]) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping (key: value), got {type(values).__name__}")
    unknown = sorted(set(values) - set(types), key=str)
    if unknown:
        raise ConfigError(
            f"{path}: {where + '.' if where else ''}{unknown[0]}: unknown key (allowed: {', '.join(sorted(types))})"
        )
    for key, value in values.items():
        name = f"{where + '.' if where else ''}{key}"
        kind = types[key]
        if not _type_ok(value, kind):
            raise ConfigError(
                f"{path}: {name}: expected {_KIND_WORDS[kind.rstrip('?')]}"
                f"{' or null' if kind.endswith('?') else ''}, got {value!r}"
            )
        if key in _RANGES and value is not None and not isinstance(value, (bool, str, list, dict)):
            low, high, inclusive = _RANGES[key]
            if not ((value >= low if inclusive else value > low) and value <= high):
                bounds = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high != float("inf") else "")
                raise ConfigError(f"{path}: {name}: must be {bounds}, got {value!r}")
        if key in _CHOICES and isinstance(value, str) and value not in _CHOICES[key]:
            raise ConfigError(f"{path}: {name}: {value!r} is not one of {', '.join(_CHOICES[key])}")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML loop config and check it: syntax, keys (nested sections too), types and
    ranges, each refused on one line naming the file, the key and the problem (:class:`ConfigError`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config ({getattr(err, 'strerror', None) or err})") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10: the backport (a dependency there)
            import tomli as tomllib
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: TOML syntax error: {str(err).splitlines()[0]}") from None
    else:
        import yaml

        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (store:, out:, iterations: ...)")
    unknown = sorted(set(config) - _TOP_KEYS, key=str)
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys {', '.join(map(str, unknown))} (allowed: {', '.join(sorted(_TOP_KEYS))})"
        )
    for key in ("store", "out", "iterations"):
        if key not in config:
            raise ConfigError(f"{path}: missing {key!r}")
    _check_section(path, "", config, _TOP_TYPES)
    if not config["iterations"]:
        raise ConfigError(f"{path}: iterations: the list is empty")
    for i, it in enumerate(config["iterations"]):
        if not isinstance(it, dict):
            raise ConfigError(f"{path}: iterations[{i + 1}]: expected a mapping, got {it!r}")
        bad = set(it) - _ITERATION_KEYS
        if bad:
            raise ConfigError(
                f"{path}: iteration {i + 1} has unknown keys {', '.join(sorted(map(str, bad)))} "
                f"(allowed: {', '.join(sorted(_ITERATION_KEYS))})"
            )
        _check_section(path, f"iterations[{i + 1}]", it, _SECTION_TYPES["iteration"])
        for section in ("features", "kmeans", "train"):
            if section in it:
                types = _train_types() if section == "train" else _SECTION_TYPES[section]
                _check_section(path, f"iterations[{i + 1}].{section}", it[section], types)
    if "model" in config:
        import dataclasses

        from ..config import ModelConfig

        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        bad_model = sorted(set(config["model"]) - fields, key=str)
        if bad_model:
            raise ConfigError(f"{path}: model.{bad_model[0]}: unknown model config field")
    base = path.parent
    for key in ("store", "out"):
        if not Path(config[key]).is_absolute():
            config[key] = str((base / config[key]).resolve())
    return config


def check_inputs(config: dict[str, Any], path: str | Path) -> None:
    """Inputs the loop needs before it starts: a complete store, and hidden-feature layers within the
    model's depth (one line naming the file and key)."""
    store = Path(config["store"])
    if not (store / "store.json").exists():
        raise ConfigError(
            f"{path}: store: {store} is not a prepared store (no store.json); build it with `hubert-ecg prepare`"
        )
    try:
        meta = json.loads((store / "store.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: store: {store}/store.json is unreadable ({err})") from None
    if not meta.get("complete"):
        raise ConfigError(f"{path}: store: {store} is incomplete; re-run its `hubert-ecg prepare` command")
    from ..config import create_config

    try:
        depth = create_config(config.get("size", "small"), **(config.get("model") or {})).num_hidden_layers
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: model: {str(err).splitlines()[0]}") from None
    for i, it in enumerate(config["iterations"], start=1):
        layer = (it.get("features") or {}).get("layer")
        if layer is not None and layer > depth:
            raise ConfigError(
                f"{path}: iterations[{i}].features.layer: {layer} is beyond the model's {depth} layers "
                f"(hidden states 0-{depth})"
            )


def _training_done(run_dir: Path, max_steps: int) -> bool:
    state_file = run_dir / "last" / "trainer_state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    return state.get("step", 0) >= max_steps or bool(state.get("stopped_early"))


def run_pretrain_loop(config_path: str | Path, *, dry_run: bool = False) -> Path | None:
    """Run every iteration of the config; returns the final model directory."""
    from ..training import TrainConfig
    from .objective import run_pretrain
    from .targets import cluster_features, dump_features, label_store

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Features, k-means and labels are not split by rank here: N ranks would redo them and race
        # on the same files. Run the loop in one process; run `pretrain` itself under torchrun.
        raise RuntimeError(
            "pretrain-loop runs in one process (WORLD_SIZE > 1 found): run it without torchrun, "
            "or run its steps (features, cluster, label, pretrain) under torchrun one by one"
        )
    config = load_config(config_path)
    check_inputs(config, config_path)  # dry runs too: a missing store is found before anything runs
    store_path, out = Path(config["store"]), Path(config["out"])
    size = config.get("size", "small")
    device = config.get("device", "auto")
    seed = int(config.get("seed", 0))
    previous_model: Path | None = None
    for index, it in enumerate(config["iterations"], start=1):
        name = it.get("name", f"iteration{index}")
        it_dir = out / name
        feat_cfg = dict(it.get("features", {}))
        km_cfg = dict(it.get("kmeans", {}))
        train_cfg = dict(it.get("train", {}))
        kind = feat_cfg.pop("kind", "tf+mfcc" if index == 1 else "hidden")
        layer = feat_cfg.pop("layer", None)
        checkpoint = None
        if kind == "hidden":
            if previous_model is None:
                raise ValueError(f"{config_path}: iteration {index} uses hidden features but has no previous model")
            checkpoint = str(previous_model)
            if layer is None:
                raise ValueError(f"{config_path}: iteration {index}: features.layer is required for hidden features")
        k = int(km_cfg.pop("k", 100 if index == 1 else 500))
        max_steps = int(train_cfg.get("max_steps", 1000))
        run_dir = it_dir / "run"
        if dry_run:
            print(
                f"{name}: features {kind}{'' if layer is None else f' (layer {layer})'}, K={k}, "
                f"{max_steps} steps -> {'done' if _training_done(run_dir, max_steps) else 'to do'}"
            )
            previous_model = run_dir / "best"
            continue
        store = ECGStore(store_path)
        target_name = f"{name}-k{k}"
        if not store.targets_path(target_name).exists():
            feats = dump_features(
                store,
                it_dir / "features",
                kind=kind,
                checkpoint=checkpoint,
                layer=layer,
                seed=seed,
                device=_device(device),
                **feat_cfg,
            )
            cluster_features(feats, [k], it_dir / "kmeans", seed=seed, **km_cfg)
            km_path = it_dir / "kmeans" / f"k{k}" / "kmeans.safetensors"
            label_store(store, [km_path], target_name, checkpoint=checkpoint, layer=layer, device=_device(device))
        cfg = TrainConfig(
            out_dir=str(run_dir),
            seed=seed,
            device=device,
            **{k_: v for k_, v in train_cfg.items() if k_ not in ("alpha", "mask_prob", "mask_length")},
        )
        if not _training_done(run_dir, max_steps):
            run_pretrain(
                str(store_path),
                [target_name],
                cfg,
                size=size,
                init_from=str(previous_model) if previous_model else None,
                alpha=float(train_cfg.get("alpha", 1.0)),
                mask_prob=train_cfg.get("mask_prob"),
                mask_length=train_cfg.get("mask_length"),
                model_overrides=config.get("model"),
            )
        best = run_dir / "best"
        previous_model = best if best.exists() else run_dir / "last"
    return previous_model


def _device(device: str) -> str:
    from ..runtime import resolve_device

    return str(resolve_device(device))
