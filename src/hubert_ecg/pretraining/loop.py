"""The whole HuBERT loop from one config file: features -> k-means -> labels -> train, iterated.

Iteration 1 clusters hand-made per-token features; iteration n+1 clusters the hidden states of
layer L of iteration n's best model and starts training from it with fresh codebooks. Every stage
is skipped when its outputs are complete and resumes when interrupted, so re-running the same
command after a kill finishes the job. Example config: ``configs/pretrain-loop.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..store import ECGStore

_ITERATION_KEYS = {"name", "features", "kmeans", "train"}
_TOP_KEYS = {"store", "out", "size", "device", "seed", "iterations", "model"}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML loop config and check its keys (one-line errors naming the key)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib
        config = tomllib.loads(text)
    else:
        import yaml
        config = yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    unknown = set(config) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("store", "out", "iterations"):
        if key not in config:
            raise ValueError(f"{path}: missing {key!r}")
    for i, it in enumerate(config["iterations"]):
        bad = set(it) - _ITERATION_KEYS
        if bad:
            raise ValueError(f"{path}: iteration {i + 1} has unknown keys {', '.join(sorted(bad))}")
    base = path.parent
    for key in ("store", "out"):
        if not Path(config[key]).is_absolute():
            config[key] = str((base / config[key]).resolve())
    return config


def _training_done(run_dir: Path, max_steps: int) -> bool:
    state_file = run_dir / "last" / "trainer_state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    return state.get("step", 0) >= max_steps or bool(state.get("stopped_early"))


def run_pretrain_loop(config_path: str | Path, *, dry_run: bool = False) -> Path | None:
    """Run every iteration of the config; returns the final model directory."""
    from .targets import cluster_features, dump_features, label_store
    from .objective import run_pretrain
    from ..training import TrainConfig

    config = load_config(config_path)
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
            print(f"{name}: features {kind}{'' if layer is None else f' (layer {layer})'}, K={k}, "
                  f"{max_steps} steps -> {'done' if _training_done(run_dir, max_steps) else 'to do'}")
            previous_model = run_dir / "best"
            continue
        store = ECGStore(store_path)
        target_name = f"{name}-k{k}"
        if not store.targets_path(target_name).exists():
            feats = dump_features(store, it_dir / "features", kind=kind, checkpoint=checkpoint, layer=layer,
                                  seed=seed, device=_device(device), **feat_cfg)
            cluster_features(feats, [k], it_dir / "kmeans", seed=seed, **km_cfg)
            km_path = it_dir / "kmeans" / f"k{k}" / "kmeans.safetensors"
            label_store(store, [km_path], target_name, checkpoint=checkpoint, layer=layer, device=_device(device))
        cfg = TrainConfig(out_dir=str(run_dir), seed=seed, device=device, **{
            k_: v for k_, v in train_cfg.items() if k_ not in ("alpha", "mask_prob", "mask_length")})
        if not _training_done(run_dir, max_steps):
            run_pretrain(str(store_path), [target_name], cfg, size=size,
                         init_from=str(previous_model) if previous_model else None,
                         alpha=float(train_cfg.get("alpha", 1.0)), mask_prob=train_cfg.get("mask_prob"),
                         mask_length=train_cfg.get("mask_length"), model_overrides=config.get("model"))
        best = run_dir / "best"
        previous_model = best if best.exists() else run_dir / "last"
    return previous_model


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def summarise_iteration(store: ECGStore, target_name: str, train_rows: np.ndarray, val_rows: np.ndarray) -> dict[str, float]:
    """Majority-cluster baseline for the masked-token accuracy of one iteration."""
    from .objective import majority_baseline
    return {"majority_baseline_acc": majority_baseline(store, target_name, val_rows, train_rows)}
