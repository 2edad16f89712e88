"""Run records (run.json): settings recorded, different settings refused, --overwrite / --resume policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import StoreFactory
from hubert_ecg.runs import (
    RUN_FILE,
    SAFE_RESUME_CHANGES,
    RunSettingsError,
    begin_run,
    decide,
    diff_settings,
    format_changes,
    load_config_file,
    read_run,
)


def _settings(**train: object) -> dict:
    base = {
        "out_dir": "run",
        "max_steps": 10,
        "lr": 1e-3,
        "batch_size": 8,
        "patience": 3,
        "val_every": 5,
        "logger": "none",
        "num_workers": 0,
        "seed": 0,
        "progress": True,
    }
    base.update(train)
    return {"run": {"store": "/data/store", "init": None}, "train": base, "finetune": {"task": "multi_label"}}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    begin_run(
        folder,
        "finetune",
        _settings(),
        command=["hubert-ecg", "finetune"],
        inputs={"store": {"path": "/data/store", "rows": 16, "manifest_sha256": "aa"}},
    )
    (folder / "last").mkdir()  # a started run
    return folder


def test_run_json_records_settings_command_versions_and_inputs(run_dir: Path) -> None:
    record = json.loads((run_dir / RUN_FILE).read_text())
    assert record["kind"] == "finetune" and record["settings"] == _settings()
    assert record["command"] == ["hubert-ecg", "finetune"]
    assert {"hubert_ecg", "torch", "numpy", "python"} <= set(record["versions"])
    assert "git_commit" in record  # a commit string, or None outside a checkout (fail soft)
    assert record["inputs"]["store"]["manifest_sha256"] == "aa"
    assert [i["action"] for i in record["invocations"]] == ["new"]


def test_identical_settings_resume_and_display_only_settings_are_ignored(run_dir: Path) -> None:
    assert decide(run_dir, "finetune", _settings()).action == "resume"
    # --quiet and another spelling of --out change nothing that is computed
    assert decide(run_dir, "finetune", _settings(progress=False, out_dir="./run")).action == "resume"


def test_different_settings_are_refused_with_a_one_line_diff(run_dir: Path) -> None:
    with pytest.raises(RunSettingsError) as err:
        decide(run_dir, "finetune", _settings(lr=2e-3, batch_size=16))
    message = str(err.value)
    assert "\n" not in message
    assert "train.batch_size 8 -> 16" in message and "train.lr 0.001 -> 0.002" in message
    assert "--overwrite" in message and "--resume" in message


def test_another_kind_of_run_is_refused(run_dir: Path) -> None:
    with pytest.raises(RunSettingsError, match="holds a finetune run, not pretrain"):
        decide(run_dir, "pretrain", _settings())


@pytest.mark.parametrize(
    "change",
    [
        {"max_steps": 20},
        {"patience": 9},
        {"val_every": 2},
        {"logger": "tensorboard"},
        {"num_workers": 4},
        {"max_steps": 30, "patience": 1},
    ],
)
def test_resume_accepts_the_safe_changes(run_dir: Path, change: dict) -> None:
    decision = decide(run_dir, "finetune", _settings(**change), resume=True)
    assert decision.action == "resume"
    assert {key for key, _, _ in decision.changes} == {f"train.{k}" for k in change}


@pytest.mark.parametrize("change", [{"lr": 2e-3}, {"batch_size": 16}, {"seed": 1}, {"max_steps": 20, "lr": 5e-4}])
def test_resume_refuses_every_other_change(run_dir: Path, change: dict) -> None:
    with pytest.raises(RunSettingsError, match="--resume accepts changes to") as err:
        decide(run_dir, "finetune", _settings(**change), resume=True)
    assert "train.lr" in str(err.value) or "train.batch_size" in str(err.value) or "train.seed" in str(err.value)
    assert "train.max_steps" not in str(err.value).split("refused:")[1]  # only the unsafe ones are named


def test_resume_refuses_task_and_data_changes(run_dir: Path) -> None:
    other_task = _settings()
    other_task["finetune"]["task"] = "binary"
    with pytest.raises(RunSettingsError, match="finetune.task"):
        decide(run_dir, "finetune", other_task, resume=True)
    with pytest.raises(RunSettingsError, match="inputs.store.manifest_sha256"):
        decide(
            run_dir,
            "finetune",
            _settings(),
            resume=True,
            inputs={"store": {"path": "/data/store", "rows": 16, "manifest_sha256": "bb"}},
        )


def test_the_resume_allow_list_is_exactly_the_documented_one() -> None:
    """Widening the allow-list (e.g. to the learning rate) must be a decision that changes this test and the docs."""
    assert SAFE_RESUME_CHANGES == {
        "train.max_steps",
        "train.patience",
        "train.val_every",
        "train.save_every",
        "train.log_every",
        "train.logger",
        "train.num_workers",
    }
    documented = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text()
    for key in SAFE_RESUME_CHANGES:
        assert f"`{key.split('.', 1)[1]}`" in documented, key


def test_overwrite_moves_the_old_run_aside_never_deletes(run_dir: Path) -> None:
    (run_dir / "last" / "marker.txt").write_text("old weights")
    decision = begin_run(run_dir, "finetune", _settings(lr=5e-4), overwrite=True)
    assert decision.action == "overwrite" and decision.moved_to is not None
    assert decision.moved_to.parent == run_dir.parent and decision.moved_to.name.startswith("run.old-")
    assert (decision.moved_to / "last" / "marker.txt").read_text() == "old weights"
    assert read_run(decision.moved_to)["settings"]["train"]["lr"] == 1e-3
    assert not (run_dir / "last").exists()
    assert read_run(run_dir)["settings"]["train"]["lr"] == 5e-4
    # a second overwrite within the same second gets its own sibling
    again = begin_run(run_dir, "finetune", _settings(lr=1e-4), overwrite=True)
    assert again.moved_to != decision.moved_to and (decision.moved_to / "last").exists()


def test_overwrite_and_resume_together_are_refused(run_dir: Path) -> None:
    with pytest.raises(RunSettingsError, match="contradict"):
        decide(run_dir, "finetune", _settings(), overwrite=True, resume=True)


def test_accepted_resume_is_recorded_in_the_invocations(run_dir: Path) -> None:
    begin_run(run_dir, "finetune", _settings(max_steps=20), resume=True)
    record = read_run(run_dir)
    assert record["settings"]["train"]["max_steps"] == 20
    assert [i["action"] for i in record["invocations"]] == ["new", "resume"]
    assert record["invocations"][1]["changes"] == [["train.max_steps", 10, 20]]


def test_a_broken_run_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(RunSettingsError, match=f"{RUN_FILE}: unreadable run record"):
        decide(tmp_path, "finetune", _settings())


def test_diff_and_format() -> None:
    changes = diff_settings({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": [1, 2], "d": None}})
    assert changes == [("a.b", 1, 2), ("a.d", "<unset>", None)]
    assert format_changes(changes[:1]) == "a.b 1 -> 2"


def test_config_file_accepts_a_run_json_or_its_settings_in_json_or_yaml(tmp_path: Path, run_dir: Path) -> None:
    assert load_config_file(run_dir / RUN_FILE) == _settings()
    (tmp_path / "c.yaml").write_text("train:\n  lr: 0.01\n")
    assert load_config_file(tmp_path / "c.yaml") == {"train": {"lr": 0.01}}
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(RunSettingsError, match="bad.yaml: not valid YAML"):
        load_config_file(tmp_path / "bad.yaml")


# ---------------------------------------------------------------------------------------------
# Checkpoints that cannot be read: refuse, never restart from step 0
# ---------------------------------------------------------------------------------------------
def test_corrupt_last_and_previous_are_refused_with_how_to_start_over(tmp_path: Path) -> None:
    from hubert_ecg.checkpoint import CheckpointError
    from hubert_ecg.training import load_training_checkpoint

    assert load_training_checkpoint(tmp_path) is None  # a new run
    for name in ("last", "previous"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text('{"step": 7, "sha256": "00"}')
        (tmp_path / name / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring corrupt checkpoint"):
        with pytest.raises(CheckpointError, match="no readable checkpoint to resume from.*--overwrite"):
            load_training_checkpoint(tmp_path)
    # last/ without its state file (e.g. emptied by hand) is corrupt too, not "no checkpoint"
    for name in ("last", "previous"):
        for f in (tmp_path / name).iterdir():
            f.unlink()
    with pytest.warns(UserWarning), pytest.raises(CheckpointError):
        load_training_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# Fine-tuning settings: the default monitor follows the task
# ---------------------------------------------------------------------------------------------
def test_default_monitor_follows_the_task() -> None:
    from hubert_ecg.finetune import FinetuneOptions
    from hubert_ecg.tasks import monitor_mode

    assert FinetuneOptions(task="regression").monitor == "mae" and monitor_mode("mae") == "min"
    assert FinetuneOptions(task="multi_label").monitor == "auroc" and monitor_mode("auroc") == "max"
    with pytest.raises(ValueError, match="not a validation metric of task regression"):
        FinetuneOptions(task="regression", monitor="auroc")


# ---------------------------------------------------------------------------------------------
# The command line: --print-config / --config replay, and the whole policy on a real (tiny) run
# ---------------------------------------------------------------------------------------------
def test_print_config_is_replayed_exactly_by_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hubert_ecg.cli import main

    args = [
        "pretrain",
        "store",
        "--targets",
        "it1",
        "--out",
        "run",
        "--lr",
        "0.002",
        "--size",
        "tiny",
        "--mask-prob",
        "0.5",
        "--precision",
        "fp32",
        "--print-config",
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.002 and printed["run"]["mask_prob"] == 0.5
    assert printed["train"]["eps"] == 1e-9 and printed["train"]["batch_size"] == 64  # pretrain defaults
    (tmp_path / "c.json").write_text(json.dumps(printed))
    assert main(["pretrain", "--config", str(tmp_path / "c.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed
    # a flag given with --config overrides the file; the rest is kept
    assert main(["pretrain", "--config", str(tmp_path / "c.json"), "--lr", "0.1", "--print-config"]) == 0
    changed = json.loads(capsys.readouterr().out)
    assert diff_settings(printed, changed) == [("train.lr", 0.002, 0.1)]


def test_finetune_print_config_resolves_recipe_and_task_defaults(capsys: pytest.CaptureFixture) -> None:
    from hubert_ecg.cli import main

    assert (
        main(
            ["finetune", "s", "--random-init", "--size", "tiny", "--out", "o", "--task", "regression", "--print-config"]
        )
        == 0
    )
    settings = json.loads(capsys.readouterr().out)
    assert settings["finetune"]["monitor"] == "mae"
    assert settings["train"]["monitor"] == "mae" and settings["train"]["monitor_mode"] == "min"
    assert settings["run"]["random_init_size"] == "tiny" and settings["train"]["patience"] == 8
    assert (
        main(["finetune", "s", "--init", "x", "--out", "o", "--recipe", "ptbxl-all", "--lr", "0.5", "--print-config"])
        == 0
    )
    settings = json.loads(capsys.readouterr().out)
    assert settings["train"]["lr"] == 0.5  # the flag beats the recipe
    assert settings["finetune"]["layerdrop"] == 0.0 and settings["finetune"]["hidden_dropout"] == 0.0  # recipe
    assert settings["train"]["patience"] == 8 and settings["finetune"]["eval_aggregate"] == "max"


def test_config_with_an_unknown_setting_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hubert_ecg.cli import main

    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: 0.1\n")
    assert main(["finetune", "--config", str(tmp_path / "c.yaml"), "--print-config"]) == 1
    assert "unknown" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_store(make_store: StoreFactory) -> Path:
    return make_store(12, rhythm=2, splits=("val", "val", "train", "train"), labels=["fast"])


def _base(store: Path, out: Path) -> list[str]:
    return [
        "finetune",
        str(store),
        "--random-init",
        "--size",
        "tiny",
        "--model-overrides",
        '{"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}',
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--val-every",
        "2",
        "--workers",
        "0",
        "--quiet",
        "--logger",
        "none",
    ]


@pytest.mark.slow
def test_cli_run_policy_end_to_end(tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Same settings: finished / resumed; other settings refused; --resume takes safe changes only."""
    from hubert_ecg.cli import main

    out = tmp_path / "run"
    base = _base(tiny_store, out)
    assert main(base + ["--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(base + ["--max-steps", "2"]) == 0
    assert "already finished at step 2 of 2" in capsys.readouterr().out
    assert main(base + ["--max-steps", "2", "--lr", "0.001"]) == 1
    assert "train.lr 5e-05 -> 0.001" in capsys.readouterr().err
    assert main(base + ["--max-steps", "3", "--lr", "0.001", "--resume"]) == 1
    assert "refused: train.lr" in capsys.readouterr().err
    assert main(base + ["--max-steps", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resuming from step 2 of 3" in text and "finished at step 3" in text
    history = [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert history == sorted(history) and history[-1] == 3  # continued, not restarted
    assert read_run(out)["inputs"]["store"]["rows"] == 12


@pytest.mark.slow
def test_a_run_json_replays_to_identical_settings(tiny_store: Path, tmp_path: Path) -> None:
    from hubert_ecg.cli import main

    out = tmp_path / "run"
    assert main(_base(tiny_store, out) + ["--max-steps", "1", "--lr", "0.002", "--task", "binary"]) == 0
    assert main(["finetune", "--config", str(out / RUN_FILE), "--out", str(tmp_path / "replay")]) == 0
    first, replay = read_run(out)["settings"], read_run(tmp_path / "replay")["settings"]
    assert diff_settings(first, replay) == []
    assert replay["train"]["lr"] == 0.002 and replay["finetune"]["task"] == "binary"
    assert replay["train"]["out_dir"] == str(tmp_path / "replay")
