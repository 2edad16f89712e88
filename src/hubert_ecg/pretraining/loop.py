"""The whole HuBERT loop from one config file: features -> k-means -> labels -> train, iterated.

Iteration 1 clusters hand-made per-token features; iteration n+1 clusters the hidden states of
layer L of iteration n's best model and starts training from it with fresh codebooks. Every stage
is skipped when its outputs are complete and resumes when interrupted, so re-running the same
command after a kill finishes the job; ``out/run.json`` records the config, and a re-run with another
config is refused unless ``--overwrite`` or ``--resume`` (:func:`run_pretrain_loop`). Example config:
``configs/pretrain-loop.yaml``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import ECGStore

if TYPE_CHECKING:
    from .targets import FeatureKind

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
    config = _parse_config(path)
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
    names: dict[str, int] = {}
    for i, it in enumerate(config["iterations"]):
        _check_iteration(path, i + 1, it)
        # Two iterations of one name would share a folder and targets: the later one would find the
        # earlier one's run finished and be skipped, returning the earlier model as the final one.
        name = it.get("name", f"iteration{i + 1}")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            # It names a folder under out/ and the store's targets: it must stay a plain name.
            raise ConfigError(
                f"{path}: iterations[{i + 1}].name: {name!r} must be a plain name (no '/', no leading '.')"
            )
        if name in names:
            raise ConfigError(
                f"{path}: iterations[{i + 1}].name: {name!r} is already the name of iteration {names[name]}"
            )
        names[name] = i + 1
    if "model" in config:
        _check_model_fields(path, config["model"])
    base = path.parent
    for key in ("store", "out"):
        if not Path(config[key]).is_absolute():
            config[key] = str((base / config[key]).resolve())
    return config


def _parse_config(path: Path) -> Any:
    """The parsed YAML or TOML file (TOML by its suffix); unreadable files and syntax errors are one line."""
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
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: TOML syntax error: {str(err).splitlines()[0]}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None


def _check_iteration(path: Path, number: int, it: Any) -> None:
    """Keys, types and ranges of ``iterations[number]`` and of its sections."""
    if not isinstance(it, dict):
        raise ConfigError(f"{path}: iterations[{number}]: expected a mapping, got {it!r}")
    bad = set(it) - _ITERATION_KEYS
    if bad:
        raise ConfigError(
            f"{path}: iteration {number} has unknown keys {', '.join(sorted(map(str, bad)))} "
            f"(allowed: {', '.join(sorted(_ITERATION_KEYS))})"
        )
    _check_section(path, f"iterations[{number}]", it, _SECTION_TYPES["iteration"])
    for section in ("features", "kmeans", "train"):
        if section in it:
            types = _train_types() if section == "train" else _SECTION_TYPES[section]
            _check_section(path, f"iterations[{number}].{section}", it[section], types)
    train = it.get("train") or {}
    if train.get("alpha") == 0 and train.get("mask_prob") == 1:
        # Found before features and k-means run, not when training starts.
        raise ConfigError(
            f"{path}: iterations[{number}].train: alpha 0 weights only unmasked tokens but mask_prob 1 masks "
            "every token: the loss would be 0 at every step"
        )


def _check_model_fields(path: Path, model: dict[str, Any]) -> None:
    """``model:`` may only set ModelConfig fields."""
    import dataclasses

    from ..config import ModelConfig

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad_model = sorted(set(model) - fields, key=str)
    if bad_model:
        raise ConfigError(f"{path}: model.{bad_model[0]}: unknown model config field")


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


@dataclass(frozen=True)
class _Settings:
    """The top-level settings of a loop config, shared by every iteration."""

    store: Path
    out: Path
    size: str
    device: str
    seed: int
    model: dict[str, Any] | None

    @classmethod
    def of(cls, config: dict[str, Any]) -> _Settings:
        return cls(
            store=Path(config["store"]),
            out=Path(config["out"]),
            size=config.get("size", "small"),
            device=config.get("device", "auto"),
            seed=int(config.get("seed", 0)),
            model=config.get("model"),
        )


@dataclass(frozen=True)
class _Iteration:
    """One iteration of the loop with its defaults filled in (the section dicts hold the remaining options)."""

    index: int
    name: str
    dir: Path
    kind: FeatureKind
    layer: int | None
    checkpoint: str | None  # the model whose hidden states are clustered (kind "hidden")
    k: int
    max_steps: int
    features: dict[str, Any]
    kmeans: dict[str, Any]
    train: dict[str, Any]
    previous_model: Path | None = None  # where this iteration's training starts (None: a fresh model)

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def target_name(self) -> str:
        return f"{self.name}-k{self.k}"


def run_pretrain_loop(
    config_path: str | Path, *, dry_run: bool = False, overwrite: bool = False, resume: bool = False
) -> Path | None:
    """Run every iteration of the config; returns the final model directory.

    ``out`` gets a ``run.json`` of the config (:mod:`hubert_ecg.runs`): re-running the same config continues
    stage by stage; another config is refused unless ``overwrite`` (``out`` is moved aside, with the targets
    it wrote into the store, and the loop starts over) or ``resume`` with safe changes only: those of
    :data:`hubert_ecg.runs.SAFE_RESUME_CHANGES` in an iteration's ``train:``, which that iteration's run then
    takes as ``pretrain --resume`` does.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Features, k-means and labels are not split by rank here: N ranks would redo them and race
        # on the same files. Run the loop in one process; run `pretrain` itself under torchrun.
        raise RuntimeError(
            "pretrain-loop runs in one process (WORLD_SIZE > 1 found): run it without torchrun, "
            "or run its steps (features, cluster, label, pretrain) under torchrun one by one"
        )
    config = load_config(config_path)
    check_inputs(config, config_path)  # dry runs too: a missing store is found before anything runs
    settings = _Settings.of(config)
    if not dry_run:
        _begin_loop_run(config, settings, overwrite=overwrite, resume=resume)
    previous_model: Path | None = None
    for index, section in enumerate(config["iterations"], start=1):
        it = _iteration(config_path, index, section, settings.out, previous_model)
        if dry_run:
            state = "done" if _training_done(it.run_dir, it.max_steps) else "to do"
            if _outputs_are_stale(ECGStore(settings.store), it):
                state = "to redo (made from an earlier state of the previous model)"
            print(
                f"{it.name}: features {it.kind}{'' if it.layer is None else f' (layer {it.layer})'}, K={it.k}, "
                f"{it.max_steps} steps -> {state}"
            )
            previous_model = it.run_dir / "best"
            continue
        _make_targets(settings, it)
        _train(settings, it, previous_model, resume=resume)
        best = it.run_dir / "best"
        previous_model = best if best.exists() else it.run_dir / "last"
    return previous_model


def _loop_record(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``out/run.json`` compares: the config less ``out`` (where the record lives) and less the
    training keys that are safe to change on resume or only shown (each iteration's own run checks those)."""
    from ..runs import NOT_COMPARED, SAFE_RESUME_CHANGES

    left_to_iteration = {key.split(".", 1)[1] for key in SAFE_RESUME_CHANGES | NOT_COMPARED if key.startswith("train.")}
    return {
        "loop": {key: value for key, value in config.items() if key not in ("out", "iterations")},
        "iterations": {
            str(i): {
                **section,
                "train": {k: v for k, v in section.get("train", {}).items() if k not in left_to_iteration},
            }
            for i, section in enumerate(config["iterations"], start=1)
        },
    }


def _begin_loop_run(config: dict[str, Any], settings: _Settings, *, overwrite: bool, resume: bool) -> None:
    """Check the config against ``out/run.json`` and record it (refused, moved aside or resumed as in
    :func:`hubert_ecg.runs.begin_run`); the store's content is among the checked inputs."""
    from ..runs import begin_run, store_fingerprint

    store = ECGStore(settings.store)
    decision = begin_run(
        settings.out,
        "pretrain-loop",
        _loop_record(config),
        overwrite=overwrite,
        resume=resume,
        inputs={"store": store_fingerprint(store)},
    )
    if decision.moved_to is not None:
        _move_targets_aside(store, settings.out, decision.moved_to)


def _move_targets_aside(store: ECGStore, out: Path, moved_to: Path) -> None:
    """Targets in the store made with a k-means model of the run moved aside go with it (never deleted):
    kept, they would be reused by the new run whatever its features and k-means settings."""
    import shutil

    old_out = out.resolve()
    targets_dir = store.targets_path("any").parent  # the store's targets folder
    for info_file in sorted(targets_dir.glob("*.json")) if targets_dir.is_dir() else []:
        try:
            kmeans = json.loads(info_file.read_text()).get("kmeans")
        except (OSError, ValueError, AttributeError):
            continue  # not a targets record
        if not isinstance(kmeans, str) or not Path(kmeans).is_relative_to(old_out):
            continue
        dest = moved_to / "store-targets"
        dest.mkdir(exist_ok=True)
        for file in (info_file.with_suffix(".npy"), info_file):
            if file.exists():
                shutil.move(str(file), str(dest / file.name))
        print(f"--overwrite: targets {info_file.stem} of the previous run moved to {dest}")


def _iteration(
    config_path: str | Path, index: int, section: dict[str, Any], out: Path, previous_model: Path | None
) -> _Iteration:
    """Iteration ``index`` of the config with its defaults (iteration 1: hand-made features and K=100;
    later ones: hidden states of the previous model and K=500)."""
    feat_cfg = dict(section.get("features", {}))
    km_cfg = dict(section.get("kmeans", {}))
    train_cfg = dict(section.get("train", {}))
    kind = feat_cfg.pop("kind", "tf+mfcc" if index == 1 else "hidden")
    layer = feat_cfg.pop("layer", None)
    checkpoint = None
    if kind == "hidden":
        if previous_model is None:
            raise ValueError(f"{config_path}: iteration {index} uses hidden features but has no previous model")
        checkpoint = str(previous_model)
        if layer is None:
            raise ValueError(f"{config_path}: iteration {index}: features.layer is required for hidden features")
    name = section.get("name", f"iteration{index}")
    return _Iteration(
        index=index,
        name=name,
        dir=out / name,
        kind=kind,
        layer=layer,
        checkpoint=checkpoint,
        k=int(km_cfg.pop("k", 100 if index == 1 else 500)),
        max_steps=int(train_cfg.get("max_steps", 1000)),
        features=feat_cfg,
        kmeans=km_cfg,
        train=train_cfg,
        previous_model=previous_model,
    )


def _make_targets(settings: _Settings, it: _Iteration) -> None:
    """Features -> k-means -> labels for one iteration, unless its targets are already in the store."""
    from .targets import cluster_features, dump_features, label_store

    store = ECGStore(settings.store)
    km_path = it.dir / "kmeans" / f"k{it.k}" / "kmeans.safetensors"
    if _outputs_are_stale(store, it):
        _move_stale_aside(store, it)
    if store.targets_path(it.target_name).exists() and _targets_from(store, it.target_name, km_path):
        return
    feats = dump_features(
        store,
        it.dir / "features",
        kind=it.kind,
        checkpoint=it.checkpoint,
        layer=it.layer,
        seed=settings.seed,
        device=_device(settings.device),
        **it.features,
    )
    cluster_features(feats, [it.k], it.dir / "kmeans", seed=settings.seed, **it.kmeans)
    label_store(
        store, [km_path], it.target_name, checkpoint=it.checkpoint, layer=it.layer, device=_device(settings.device)
    )


def _targets_from(store: ECGStore, name: str, km_path: Path) -> bool:
    """True when the store's targets ``name`` were labelled with ``km_path`` as it is now.

    Targets of the same name made by another run (another loop's ``out``, a hand-run ``label``) are
    refused rather than trained on: they come from other features and another k-means model.
    """
    from ..atomic import sha256_file

    info_file = store.targets_path(name).with_suffix(".json")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, ValueError):
        info = {}
    recorded = info.get("kmeans") if isinstance(info, dict) else None
    if not isinstance(recorded, str) or Path(recorded) != km_path.resolve():
        raise ValueError(
            f"{store.targets_path(name)}: targets of this name exist but were not made by this run's k-means "
            f"model {km_path} (made by {recorded or 'an unknown model'}); rename the iteration or move them away"
        )
    # Labelling was cut short after the k-means file changed: label_store refuses or finishes the job.
    return km_path.exists() and info.get("kmeans_sha256") == sha256_file(km_path)


def _recorded_checkpoints(store: ECGStore, it: _Iteration) -> list[tuple[str, str | None]]:
    """(what, weights sha256) of the previous model as each output of ``it`` recorded it when it was made."""
    found: list[tuple[str, str | None]] = []

    def read(path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    plan = read(it.dir / "features" / "plan.json")
    if plan:
        found.append((str(it.dir / "features"), plan.get("checkpoint_sha256")))
    targets = read(store.targets_path(it.target_name).with_suffix(".json"))
    kmeans = targets.get("kmeans")
    if isinstance(kmeans, str) and Path(kmeans).is_relative_to(it.dir.resolve()):
        found.append(
            (str(store.targets_path(it.target_name)), (targets.get("feature_spec") or {}).get("checkpoint_sha256"))
        )
    init = (read(it.run_dir / "run.json").get("inputs") or {}).get("init") or {}
    if isinstance(init, dict) and init:
        found.append((str(it.run_dir), init.get("sha256")))
    return found


def _outputs_are_stale(store: ECGStore, it: _Iteration) -> bool:
    """True when an output of ``it`` was made from another state of the previous iteration's model.

    A ``--resume`` that lengthens an earlier iteration changes its best model after the later iterations'
    features, targets and runs were made from it; each of those records the weights it used.
    """
    if it.index == 1:
        return False
    from .targets import _checkpoint_sha256

    previous = Path(it.checkpoint) if it.checkpoint else it.previous_model
    if previous is None or not previous.exists():
        return False
    current = _checkpoint_sha256(str(previous))
    if current is not None and any(sha is not None and sha != current for _, sha in _recorded_checkpoints(store, it)):
        return True
    # Features dumped from the previous iteration's `last` before it had a `best` (or the reverse).
    try:
        plan = json.loads((it.dir / "features" / "plan.json").read_text())
    except (OSError, ValueError):
        return False
    recorded = plan.get("checkpoint") if isinstance(plan, dict) else None
    return it.checkpoint is not None and recorded is not None and recorded != str(Path(it.checkpoint).resolve())


def _run_targets_changed(settings: _Settings, it: _Iteration) -> bool:
    """True when the iteration's run recorded a checksum of its targets that the store's file no longer has.

    The targets can be made again under the same name (deleted by hand, or a k-means refitted); a run
    counted as done would then be skipped although it learned other targets.
    """
    from ..atomic import sha256_file

    try:
        record = json.loads((it.run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    recorded = (((record.get("inputs") or {}).get("targets") or {}).get(it.target_name) or {}).get("sha256")
    targets = ECGStore(settings.store).targets_path(it.target_name)
    return bool(recorded) and targets.exists() and sha256_file(targets) != recorded


def _move_aside(it: _Iteration, subfolders: list[str], why: str) -> Path:
    """Move subfolders of an iteration into ``{dir}/stale-N`` (never deleted) and say so."""
    import shutil

    n = 1
    while (it.dir / f"stale-{n}").exists():
        n += 1
    dest = it.dir / f"stale-{n}"
    dest.mkdir(parents=True)
    for sub in subfolders:
        if (it.dir / sub).exists():
            shutil.move(str(it.dir / sub), str(dest / sub))
    print(f"{it.name}: {why}; moved to {dest} and made again")
    return dest


def _move_stale_aside(store: ECGStore, it: _Iteration) -> None:
    """Move an iteration's outputs made from an older previous model into ``{dir}/stale-N`` (never deleted)."""
    import shutil

    dest = _move_aside(it, ["features", "kmeans", "run"], "made from an earlier state of the previous model")
    targets = store.targets_path(it.target_name)
    info = targets.with_suffix(".json")
    try:
        kmeans = json.loads(info.read_text()).get("kmeans") if info.exists() else None
    except (OSError, ValueError, AttributeError):
        kmeans = None
    # Finished targets of this iteration, or an unfinished labelling (its partial file, progress and
    # plan, which would make the new labelling refuse to mix settings); never another run's targets.
    if not info.exists() or (isinstance(kmeans, str) and Path(kmeans).is_relative_to(it.dir.resolve())):
        for file in sorted(targets.parent.glob(f"{it.target_name}.*")):
            shutil.move(str(file), str(dest / file.name))


def _train(settings: _Settings, it: _Iteration, previous_model: Path | None, *, resume: bool) -> None:
    """Masked-prediction training of one iteration (from the previous iteration's model), unless done."""
    from ..training import TrainConfig
    from .objective import run_pretrain

    cfg = TrainConfig(
        out_dir=str(it.run_dir),
        seed=settings.seed,
        device=settings.device,
        **{k_: v for k_, v in it.train.items() if k_ not in ("alpha", "mask_prob", "mask_length")},
    )
    if _run_targets_changed(settings, it):
        _move_aside(it, ["run"], "trained on other targets than the store now holds")
    if not _training_done(it.run_dir, it.max_steps):
        run_pretrain(
            str(settings.store),
            [it.target_name],
            cfg,
            size=settings.size,
            init_from=str(previous_model) if previous_model else None,
            alpha=float(it.train.get("alpha", 1.0)),
            mask_prob=it.train.get("mask_prob"),
            mask_length=it.train.get("mask_length"),
            model_overrides=settings.model,
            resume=resume,
        )


def _device(device: str) -> str:
    from ..runtime import resolve_device

    return str(resolve_device(device))
