"""Shipped fine-tuning recipes: they load, hold only known keys, and match the reference's finetune.sh."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from hubert_ecg.recipes import KNOWN_KEYS, RecipeError, list_recipes, load_recipe, resolve_recipe

# From reference doc §7.4 (finetune.sh) and §8.1 (test.sh n_augs; None = no TTA):
# name -> (patience, val_interval, training_steps, layerdrop small/base/large, random crop,
#          label_start_index, task, n_augs)
REFERENCE = {
    "ribeiro": (5, 5000, 70000, (0.0, 0.0, 0.0), False, 3, "multi_label", None),
    "ningbo": (10, 500, 70000, (0.1, 0.1, 0.0), True, 3, "multi_label", 3),
    "ptb": (1, 50, 70000, (0.0, 0.0, 0.0), True, 3, "multi_label", 3),
    "cpsc": (13, 50, 70000, (0.1, 0.2, 0.0), True, 3, "multi_label", 5),
    "sph": (8, 500, 70000, (0.0, 0.0, 0.0), True, 4, "multi_label", 5),
    "hefei": (8, 500, 70000, (0.1, 0.0, 0.0), True, 3, "multi_label", 5),
    "ptbxl-all": (8, 500, 70000, (0.0, 0.1, 0.1), True, 4, "multi_label", 3),
    "ptbxl-diag": (8, 500, 70000, (0.0, 0.1, 0.1), True, 4, "multi_label", 3),
    "ptbxl-subdiag": (8, 500, 70000, (0.0, 0.1, 0.1), True, 4, "multi_label", 5),
    "ptbxl-superdiag": (8, 500, 70000, (0.0, 0.1, 0.1), True, 4, "multi_label", 3),
    "ptbxl-form": (8, 500, 70000, (0.0, 0.1, 0.1), True, 4, "multi_label", 3),
    "ptbxl-rhythm": (8, 500, 70000, (0.0, 0.1, 0.1), True, 4, "multi_label", 3),
    "samitrop": (2, 50, 70000, (0.0, 0.0, 0.0), True, 6, "multi_class", 6),
    "cpsc-extra": (2, 50, 70000, (0.0, 0.0, 0.0), True, 3, "multi_label", 3),
    "georgia": (15, 50, 100000, (0.1, 0.2, 0.0), True, 3, "multi_label", 15),
    "chapman": (20, 50, 100000, (0.0, 0.0, 0.0), True, 3, "multi_label", 9),
}
RECIPE_DIR = Path(__file__).resolve().parents[1] / "src" / "hubert_ecg" / "recipes"
MAPPING_DOC = Path(__file__).resolve().parents[1] / "docs" / "REFERENCE_MAPPING.md"


def test_every_published_recipe_is_shipped() -> None:
    assert list_recipes() == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_recipe_matches_reference(name: str) -> None:
    patience, val_every, steps, layerdrop, random_crop, start, task, n_augs = REFERENCE[name]
    recipe = load_recipe(name)
    assert set(recipe) <= KNOWN_KEYS
    assert (recipe["patience"], recipe["val_every"], recipe["max_steps"]) == (patience, val_every, steps)
    assert recipe["layerdrop"] == dict(zip(("small", "base", "large"), layerdrop))
    assert recipe["crop"] == ("random" if random_crop else "first")
    assert (recipe["label_start_index"], recipe["task"]) == (start, task)
    # Common to every published run: batch 64, lr 1e-5, target auroc, --use_loss_weights, linear head,
    # one LR for all layers, dropout 0, frozen conv stem.
    assert (recipe["batch_size"], recipe["lr"], recipe["monitor"], recipe["head_type"]) == (64, 1e-5, "auroc", "linear")
    assert (recipe["layer_decay"], recipe["head_lr_mult"], recipe["dropout"], recipe["train_conv_stem"]) == (
        1.0,
        1.0,
        0.0,
        False,
    )
    assert recipe["pos_weight"] is (task == "multi_label") and recipe["class_weights"] is (task == "multi_class")
    if n_augs is None:
        assert (recipe["eval_windows"], recipe["eval_crops"]) == ("first", 1)
    else:
        assert (recipe["eval_windows"], recipe["eval_crops"], recipe["eval_aggregate"]) == ("random", n_augs, "max")
    assert 0 < recipe["val_every"] <= recipe["max_steps"]
    # Each file cites the reference line it reproduces.
    text = (RECIPE_DIR / f"{name}.yaml").read_text()
    assert re.search(
        rf"^# Reference recipe: finetune\.sh .*patience {patience}, --val_interval={val_every}, "
        rf"--training_steps={steps}",
        text,
        re.M,
    )


def test_resolve_recipe_picks_the_size() -> None:
    recipe = load_recipe("cpsc")
    assert [resolve_recipe(recipe, s)["layerdrop"] for s in ("small", "base", "large")] == [0.1, 0.2, 0.0]
    assert isinstance(recipe["layerdrop"], dict)  # the loaded recipe is not modified
    with pytest.raises(RecipeError) as err:
        resolve_recipe(recipe, "huge")
    assert str(err.value) == "unknown model size 'huge' (choose from small, base, large)"


def test_load_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe("ptbxl")
    assert str(err.value).startswith("unknown recipe 'ptbxl' (available: chapman, cpsc, cpsc-extra, georgia,")
    bad = tmp_path / "mine.yaml"
    bad.write_text("task: multi_label\nlearning_rate: 0.001\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(err.value) == f"{bad}: unknown key(s) learning_rate (known: {', '.join(sorted(KNOWN_KEYS))})"
    bad.write_text("layerdrop: {small: 0.1, base: 1.5, large: 0}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(err.value) == (
        f"{bad}: layerdrop must be a number in [0, 1) or a mapping small/base/large -> "
        "number in [0, 1), got {'small': 0.1, 'base': 1.5, 'large': 0}"
    )
    bad.write_text("lr: 1e-5\n")  # YAML 1.1 reads this as a string, a classic trap
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(err.value) == f"{bad}: lr must be a number in (0, 1), got '1e-5'"
    bad.write_text("max_steps: 100\nval_every: 500\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(err.value) == f"{bad}: val_every (500) exceeds max_steps (100)"
    good = tmp_path / "good.yaml"
    good.write_text("task: regression\nmonitor: mae\nlayerdrop: 0.05\n")
    assert load_recipe(good) == {"task": "regression", "monitor": "mae", "layerdrop": 0.05}


def test_recipe_keys_are_finetune_options() -> None:
    """Every recipe key but the loop settings is a field of the fine-tuning options, by name."""
    finetune = pytest.importorskip("hubert_ecg.finetune")
    fields = {f.name for f in dataclasses.fields(finetune.FinetuneOptions)}
    # Loop settings, plus `dropout` (the CLI's --dropout sets the hidden/activation dropouts).
    other_keys = {"batch_size", "lr", "max_steps", "val_every", "patience", "label_start_index", "notes", "dropout"}
    assert KNOWN_KEYS - other_keys <= fields
    for name in list_recipes():
        recipe = resolve_recipe(load_recipe(name), "base")
        finetune.FinetuneOptions(**{k: v for k, v in recipe.items() if k in fields})


def test_mapping_doc_covers_every_reference_argument() -> None:
    text = MAPPING_DOC.read_text()
    finetune_positional = [
        "train_iteration",
        "path_to_dataset_csv_train",
        "path_to_dataset_csv_val",
        "vocab_size",
        "patience",
        "batch_size",
        "target_metric",
    ]
    finetune_options = [
        "--sweep_dir",
        "--ramp_up_perc",
        "--training_steps",
        "--epochs",
        "--val_interval",
        "--downsampling_factor",
        "--random_crop",
        "--accumulation_steps",
        "--label_start_index",
        "--freezing_steps",
        "--resume_finetuning",
        "--unfreeze_conv_embedder",
        "--transformer_blocks_to_unfreeze",
        "--lr",
        "--layer_wise_lr",
        "--load_path",
        "--classifier_hidden_size",
        "--use_label_embedding",
        "--intervals_for_penalty",
        "--dynamic_reg",
        "--use_loss_weights",
        "--random_init",
        "--largeness",
        "--weight_decay_mult",
        "--model_dropout_mult",
        "--finetuning_layerdrop",
        "--wandb_run_name",
        "--task",
    ]
    test_positional = ["path_to_dataset_csv", "ecg_dir_path", "batch_size", "model_path"]
    test_options = [
        "--downsampling_factor",
        "--label_start_index",
        "--save_id",
        "--tta",
        "--tta_aggregation",
        "--n_augs",
        "--challenge_metric",
        "--task",
        "--save_probs",
    ]
    finetune_part, test_part = text.split("## test.py", 1)
    for arg in finetune_positional + finetune_options:
        assert re.search(rf"^\| `{re.escape(arg)}`", finetune_part, re.M), f"finetune.py {arg} not mapped"
    for arg in test_positional + test_options:
        assert re.search(rf"^\| `{re.escape(arg)}`", test_part, re.M), f"test.py {arg} not mapped"
