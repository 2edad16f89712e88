"""The published HuBERT-ECG fine-tuning recipes as ready configs (``hubert-ecg finetune --recipe NAME``).

One YAML file per dataset recipe of the reference's ``finetune.sh`` (reference doc §7.4) with the
test-time augmentation of its ``test.sh`` (§8.1). Keys are the option names of ``hubert-ecg
finetune`` (``KNOWN_KEYS``); ``layerdrop`` is a number or a ``{small, base, large}`` mapping because
the reference used a different value per model size. Command-line flags override recipe values.

    >>> from hubert_ecg.recipes import load_recipe, resolve_recipe
    >>> resolve_recipe(load_recipe("ptbxl-all"), "base")["layerdrop"]
    0.1
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import HEAD_TYPES, TASKS
from ..tasks import MONITORS as _MONITOR_MODES
from ..tasks import get_task

__all__ = [
    "KNOWN_KEYS",
    "MODEL_SIZES",
    "RecipeError",
    "list_recipes",
    "load_recipe",
    "resolve_recipe",
    "validate_recipe",
]

MODEL_SIZES: tuple[str, ...] = ("small", "base", "large")
#: Monitor metrics a recipe may name: the one list of :data:`hubert_ecg.tasks.MONITORS`.
MONITORS: tuple[str, ...] = tuple(_MONITOR_MODES)


class RecipeError(ValueError):
    """A recipe that does not exist or holds an unknown key or a bad value (message names the file)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _prob(v: Any) -> bool:
    return _is_num(v) and 0.0 <= v < 1.0


# key -> (check, what a valid value is). The finetune CLI reads exactly these keys.
_CHECKS: dict[str, tuple[Any, str]] = {
    "task": (lambda v: v in TASKS, f"one of {', '.join(TASKS)}"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    "max_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "val_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "patience": (lambda v: _is_int(v) and v >= 1, "an integer >= 1 (validations without improvement)"),
    "monitor": (lambda v: v in MONITORS, f"one of {', '.join(MONITORS)}"),
    "crop": (lambda v: v in ("random", "first"), "random or first"),
    "layerdrop": (
        lambda v: (
            _prob(v) or (isinstance(v, dict) and set(v) == set(MODEL_SIZES) and all(_prob(x) for x in v.values()))
        ),
        "a number in [0, 1) or a mapping small/base/large -> number in [0, 1)",
    ),
    "label_start_index": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "pos_weight": (lambda v: isinstance(v, bool), "true or false"),
    "class_weights": (lambda v: isinstance(v, bool), "true or false"),
    "head_type": (lambda v: v in HEAD_TYPES, f"one of {', '.join(HEAD_TYPES)}"),
    "layer_decay": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1] (1 = no layer-wise decay)"),
    "head_lr_mult": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "dropout": (_prob, "a number in [0, 1)"),
    "train_conv_stem": (lambda v: isinstance(v, bool), "true or false"),
    "eval_windows": (lambda v: v in ("first", "random", "sliding"), "first, random or sliding"),
    "eval_crops": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "eval_aggregate": (lambda v: v in ("mean", "max"), "mean or max"),
    "notes": (lambda v: isinstance(v, str), "text"),
}
#: Every key a recipe may hold.
KNOWN_KEYS: frozenset[str] = frozenset(_CHECKS)


def _recipe_files() -> dict[str, Any]:
    folder = resources.files(__name__)
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted (e.g. ``cpsc``, ``ptbxl-all``, ``samitrop``)."""
    return sorted(_recipe_files())


def validate_recipe(recipe: Any, source: str) -> dict[str, Any]:
    """Check keys and values; ``source`` names the file in the one-line errors."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of option names to values")
    unknown = sorted(set(recipe) - KNOWN_KEYS)
    if unknown:
        raise RecipeError(
            f"{source}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(KNOWN_KEYS))})"
        )
    for key, value in recipe.items():
        check, expected = _CHECKS[key]
        if not check(value):
            raise RecipeError(f"{source}: {key} must be {expected}, got {value!r}")
    if "monitor" in recipe and "task" in recipe:
        allowed = get_task(recipe["task"]).monitors
        if recipe["monitor"] not in allowed:
            raise RecipeError(
                f"{source}: monitor {recipe['monitor']} is not a validation metric of task "
                f"{recipe['task']} (choose from {', '.join(allowed)})"
            )
    if "val_every" in recipe and "max_steps" in recipe and recipe["val_every"] > recipe["max_steps"]:
        raise RecipeError(f"{source}: val_every ({recipe['val_every']}) exceeds max_steps ({recipe['max_steps']})")
    return recipe


def load_recipe(name: str | os.PathLike) -> dict[str, Any]:
    """A shipped recipe by name (``ptbxl-all``; ``.yaml`` optional) or a user's YAML file by path.

    Returns the validated mapping (``layerdrop`` may still be per size: see :func:`resolve_recipe`).

    Raises:
        RecipeError: unknown name, unreadable YAML, unknown key or out-of-range value.
    """
    import yaml

    text_name = str(name)
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        source, text = str(path), path.read_text(encoding="utf-8")
    else:
        stem = text_name[: -len(".yaml")] if text_name.endswith(".yaml") else text_name
        files = _recipe_files()
        if stem not in files:
            raise RecipeError(f"unknown recipe {text_name!r} (available: {', '.join(sorted(files))})")
        source, text = f"recipe {stem}", files[stem].read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None
    return validate_recipe(data if data is not None else {}, source)


def resolve_recipe(recipe: dict[str, Any], size: str) -> dict[str, Any]:
    """A copy of ``recipe`` for one model size: a per-size ``layerdrop`` becomes that size's number."""
    if size not in MODEL_SIZES:
        raise RecipeError(f"unknown model size {size!r} (choose from {', '.join(MODEL_SIZES)})")
    out = dict(recipe)
    if isinstance(out.get("layerdrop"), dict):
        out["layerdrop"] = float(out["layerdrop"][size])
    return out
