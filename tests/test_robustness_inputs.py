"""Bad inputs end to end: every case of ``bad_inputs.CASES`` through the readers, ``prepare`` and
``predict``; label tables, manifests and checkpoints that do not fit. Each test asserts the one-line
message (file or row named), the exit status and what is (not) left on disk."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import CASES, REJECTED, USABLE, write_case, write_corpus
from hubert_ecg.cli import main
from hubert_ecg.io import RecordError, read_record
from hubert_ecg.preprocess import PreprocessError, PreprocessSpec, preprocess_signal
from hubert_ecg.synthetic import SYNTHETIC_LABELS, write_synthetic_dataset

ERROR_PREFIX = "hubert-ecg: error: "


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def cli(*args: object, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m hubert_ecg ARGS`` in a fresh process (what a user's shell sees)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hubert_ecg", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def run_main(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """The same command line in this process (cheaper; ``main`` catches what a user would see)."""
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *patterns: str) -> str:
    """stderr ends in exactly one ``hubert-ecg: error:`` line matching ``patterns``; no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for pattern in patterns:
        assert re.search(pattern, errors[0]), (pattern, errors[0])
    return errors[0]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (``.<name>.<random>.tmp``)."""
    return sorted(p for p in folder.rglob("*.tmp"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny model with a 5-label head, saved in our format."""
    import torch

    from hubert_ecg.checkpoint import save_pretrained
    from hubert_ecg.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny", head={"num_labels": len(SYNTHETIC_LABELS), "type": "linear"})
    model.info.task = "multi_label"
    model.info.label_names = list(SYNTHETIC_LABELS)
    model.info.preprocessing = PreprocessSpec().to_dict()
    return save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny")


# ---------------------------------------------------------------------------------------------
# 1. every case through the reader + preprocessing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_each_case_is_rejected_with_its_reason_or_read_as_expected(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = write_case(name, tmp_path)
    if case.expect == "reject":
        with pytest.raises((RecordError, PreprocessError)) as info:
            record = read_record(path)
            preprocess_signal(record.signal, record.fs, PreprocessSpec())
        message = str(info.value)
        assert "\n" not in message
        assert re.search(case.reason, message), message
        if isinstance(info.value, RecordError):  # readers name the file; preprocessing gets it from the caller
            assert message.startswith(str(path))
        return
    record = read_record(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN lead's MissingLeadWarning; asserted via meta below
        prepared = preprocess_signal(record.signal, record.fs, PreprocessSpec())
    assert prepared.shape == (12, int(round(record.duration_s * 100)))
    assert np.isfinite(prepared).all()
    if case.expect == "warn":
        assert any(re.search(case.reason, w) for w in record.meta["warnings"]), record.meta["warnings"]
    else:
        assert record.meta["warnings"] == []


def test_odd_sampling_rates_give_the_same_model_input_as_500_hz(tmp_path: Path) -> None:
    """257 Hz and 1000 Hz must work, not merely not fail: the 100 Hz rows match a 500 Hz recording of the
    same signal (synthetic waves are smooth, so the only difference is resampling error)."""
    from bad_inputs import _wfdb
    from hubert_ecg.synthetic import synthetic_record

    def smooth(fs: float) -> np.ndarray:  # the same noiseless waveform sampled at fs
        return synthetic_record(np.random.default_rng(1), fs=fs, noise_mv=0.0).signal.astype(np.float64)

    spec = PreprocessSpec()
    reference = preprocess_signal(smooth(500.0), 500.0, spec)
    for fs in (257.0, 1000.0):
        record = read_record(_wfdb(tmp_path, f"rate{int(fs)}", smooth(fs), fs=fs))
        assert record.fs == fs
        prepared = preprocess_signal(record.signal, record.fs, spec)
        assert prepared.shape == reference.shape
        # rows are min-max scaled to [-1, 1]; resampling a 257 Hz grid moves QRS peaks by < 10 %
        inner = slice(50, -50)  # filter edge effects differ with the rate
        error = np.abs(prepared[:, inner] - reference[:, inner])
        assert error.max() < 0.15 and np.median(error) < 0.005, (fs, error.max(), np.median(error))


# ---------------------------------------------------------------------------------------------
# 2. batch commands go on: prepare and predict over the whole corpus
# ---------------------------------------------------------------------------------------------
def test_prepare_over_the_corpus_rejects_each_bad_file_and_keeps_the_rest(corpus, tmp_path: Path) -> None:
    folder, paths = corpus
    store = tmp_path / "store"
    proc = cli("prepare", folder, "--out", store, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # counts reported at the end
    assert re.search(
        rf"{len(USABLE)} records in \d+ rows, {len(REJECTED)} rejected \(reasons in .*rejects\.csv\)", proc.stdout
    ), proc.stdout
    rejects = {row["record_id"]: row for row in read_rows(store / "rejects.csv")}
    assert sorted(rejects) == sorted(REJECTED)
    for name in REJECTED:
        assert re.search(CASES[name].reason, rejects[name]["reason"]), (name, rejects[name])
        assert Path(rejects[name]["source"]) == paths[name]
    manifest = read_rows(store / "manifest.csv")
    kept = {row["record_id"]: row for row in manifest if row["segment"] == "0"}
    assert sorted(kept) == sorted(USABLE)
    for name in USABLE:
        meta_warnings = json.loads(kept[name]["meta"]).get("warnings", [])
        if CASES[name].expect == "warn":
            assert any(re.search(CASES[name].reason, w) for w in meta_warnings), (name, meta_warnings)
    assert float(kept["fs_257"]["orig_fs"]) == 257.0 and float(kept["fs_1000"]["orig_fs"]) == 1000.0
    assert json.loads((store / "store.json").read_text())["complete"] is True
    assert leftovers(store) == []


def test_predict_over_the_corpus_writes_rejects_and_every_good_record(
    corpus, tiny_classifier: Path, tmp_path: Path, capsys
) -> None:
    folder, paths = corpus
    out = tmp_path / "pred.csv"
    code, stdout, err = run_main(capsys, "predict", tiny_classifier, folder, "--out", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert f"wrote {len(USABLE)} records to {out}; {len(REJECTED)} rejected" in stdout
    rows = read_rows(out)
    assert sorted(r["record_id"] for r in rows) == sorted(USABLE)
    probs = np.array([[float(r[f"p_{n}"]) for n in SYNTHETIC_LABELS] for r in rows])
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    rejects = {r["record_id"]: r for r in read_rows(Path(f"{out}.rejects.csv"))}
    assert sorted(rejects) == sorted(REJECTED)
    for name in REJECTED:
        assert re.search(CASES[name].reason, rejects[name]["reason"]), rejects[name]
    # a second run over good records only removes the stale rejects table of the first
    code, _, err = run_main(
        capsys, "predict", tiny_classifier, paths["fs_257"], "--out", out, "--quiet", "--device", "cpu"
    )
    assert code == 0, err
    assert not Path(f"{out}.rejects.csv").exists()
    assert [r["record_id"] for r in read_rows(out)] == ["fs_257"]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 3. single-input commands: exit 1, one line, no traceback (unless --debug)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["npy_truncated", "too_short", "duplicated_leads"])
def test_predict_on_one_bad_file_exits_1_naming_file_and_problem(
    name: str, tiny_classifier: Path, tmp_path: Path, capsys
) -> None:
    path = write_case(name, tmp_path / "in")
    out = tmp_path / "pred.csv"
    code, _, err = run_main(capsys, "predict", tiny_classifier, path, "--out", out, "--quiet", "--device", "cpu")
    assert code == 1
    assert_one_line_error(err, re.escape(str(path)), CASES[name].reason)
    assert not out.exists()


def test_subprocess_error_is_one_line_and_debug_shows_the_traceback(tiny_classifier: Path, tmp_path: Path) -> None:
    path = write_case("muse_bad_base64", tmp_path)
    plain = cli("predict", tiny_classifier, path, "--out", tmp_path / "p.csv", "--quiet", "--device", "cpu")
    assert plain.returncode == 1
    assert_one_line_error(plain.stderr, re.escape(str(path)), "lead V3: invalid base64")
    debug = cli("--debug", "predict", tiny_classifier, path, "--out", tmp_path / "p.csv", "--quiet", "--device", "cpu")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "invalid base64" in debug.stderr


def test_info_on_damaged_and_hostile_checkpoints(tiny_classifier: Path, tmp_path: Path, capsys) -> None:
    import shutil

    # weights cut short: the checksum recorded in config.json catches it
    cut = tmp_path / "cut"
    shutil.copytree(tiny_classifier, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_main(capsys, "info", cut)
    assert code == 1
    assert_one_line_error(err, r"cut/model\.safetensors: checksum mismatch")
    # a .pt that is not a checkpoint at all
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    code, _, err = run_main(capsys, "info", junk)
    assert code == 1
    assert_one_line_error(err, r"junk\.pt: not a readable PyTorch checkpoint")
    # a pickle whose reduce runs a shell command: refused, and the command never runs
    import torch

    marker = tmp_path / "pwned"
    hostile = tmp_path / "evil.pt"
    torch.save({"model_config": _Hostile(f"touch {marker}"), "model_state_dict": {}}, hostile)
    proc = cli("info", hostile)
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, r"evil\.pt: .*(posix|os)\.system")
    assert not marker.exists()


class _Hostile:
    """Unpickling this runs ``command`` in a shell (what a malicious published .pt would do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (self.command,))


# ---------------------------------------------------------------------------------------------
# 4. label tables, duplicate ids, manifests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("small"), 6, fmt="npy", seed=5, seconds=3.0)


def _labels(folder: Path, text: str) -> Path:
    path = folder / "labels.csv"
    path.write_text(text)
    return path


def test_label_csv_problems_are_one_line_errors_naming_the_row(small_set: Path, tmp_path: Path, capsys) -> None:
    cases = {
        "": r"labels\.csv: the labels file is empty",
        "record_id,a\n": r"labels\.csv: the labels file is empty",
        "record_id,a\nsyn00000,1\nsyn00000,0\n": r"labels\.csv, row 3: duplicate record id 'syn00000'",
        "record_id,a\nsyn00000,1\nsyn00001,yes\n": r"labels\.csv, row 3: column 'a' is not a number \('yes'\)",
    }
    for i, (text, pattern) in enumerate(cases.items()):
        (tmp_path / str(i)).mkdir()
        labels = _labels(tmp_path / str(i), text)
        store = tmp_path / f"s{i}"
        code, _, err = run_main(
            capsys, "prepare", small_set, "--out", store, "--labels", labels, "--fs", 500, "--quiet"
        )
        assert code == 1, text
        assert_one_line_error(err, pattern)
        assert not store.exists()  # refused before anything was written


def test_blank_and_out_of_range_labels(small_set: Path, tmp_path: Path, capsys) -> None:
    """Blanks are kept as unknown; values outside 0/1 are stored (regression is legal) but a multi-label
    fine-tune refuses them naming the record, before any checkpoint is written."""
    ids = [f"syn{i:05d}" for i in range(6)]
    rows = [f"{rid},{'' if i == 1 else i % 2},{2 if i == 4 else 0}" for i, rid in enumerate(ids)]
    labels = _labels(tmp_path, "record_id,a,b\n" + "\n".join(rows) + "\n")
    store = tmp_path / "store"
    code, _, err = run_main(
        capsys, "prepare", small_set, "--out", store, "--labels", labels, "--fs", 500, "--val-fraction", 0.3, "--quiet"
    )
    assert code == 0, err
    manifest = {r["record_id"]: r for r in read_rows(store / "manifest.csv")}
    assert manifest["syn00001"]["label:a"] == "" and manifest["syn00004"]["label:b"] == "2"
    from hubert_ecg.store import ECGStore

    assert np.isnan(ECGStore(store).labels[list(ECGStore(store).record_ids).index("syn00001"), 0])
    run = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "finetune",
        store,
        "--random-init",
        "--size",
        "tiny",
        "--out",
        run,
        "--max-steps",
        1,
        "--batch-size",
        2,
        "--workers",
        0,
        "--logger",
        "none",
        "--quiet",
    )
    assert code == 1
    assert_one_line_error(err, r"record 'syn00004', label 'b' is 2; multi_label labels must be 0 or 1")
    assert not (run / "last").exists()


def test_duplicate_record_ids_from_two_files_are_both_kept_under_distinct_ids(tmp_path: Path) -> None:
    from hubert_ecg.store import ECGStore, prepare_store

    for sub in ("a", "b"):
        write_synthetic_dataset(tmp_path / sub, 1, fmt="npy", seed=ord(sub), seconds=3.0)
    prepare_store([tmp_path / "a", tmp_path / "b"], tmp_path / "s", read_kwargs={"fs": 500.0}, progress=False)
    store = ECGStore(tmp_path / "s")
    assert sorted(store.record_ids) == ["syn00000", "syn00000@1"]
    assert {Path(s).parent.name for s in store.sources} == {"a", "b"}


def test_manifest_rows_that_are_missing_or_leave_the_data_root(small_set: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "one.npy"
    inside.write_bytes((small_set / "syn00000.npy").read_bytes())
    cases = {
        "missing": ("path\none.npy\nnot_there.npy\n", r"manifest\.csv: row 3: not_there\.npy not found"),
        "dotdot": (
            "path\none.npy\n../../small0/syn00001.npy\n",
            r"manifest\.csv: row 3: \.\./\.\./small0/syn00001\.npy is outside the data root .*"
            r"--allow-absolute-paths",
        ),
        "absolute": (
            f"path\n{small_set / 'syn00002.npy'}\n",
            r"manifest\.csv: row 2: /.*syn00002\.npy is outside the data root",
        ),
    }
    for name, (text, pattern) in cases.items():
        manifest = root / "manifest.csv"
        manifest.write_text(text)
        store = tmp_path / f"s_{name}"
        code, _, err = run_main(capsys, "prepare", manifest, "--out", store, "--fs", 500, "--quiet")
        assert code == 1, name
        assert_one_line_error(err, pattern)
        assert not store.exists()
    # the user may allow it explicitly
    manifest = root / "manifest.csv"
    manifest.write_text(f"path\none.npy\n{small_set / 'syn00002.npy'}\n")
    code, out, err = run_main(
        capsys, "prepare", manifest, "--out", tmp_path / "allowed", "--fs", 500, "--quiet", "--allow-absolute-paths"
    )
    assert code == 0, err
    assert "2 records" in out


def test_predict_refuses_a_manifest_leaving_the_root(
    small_set: Path, tiny_classifier: Path, tmp_path: Path, capsys
) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{small_set / 'syn00003.npy'}\n")
    out = tmp_path / "p.csv"
    code, _, err = run_main(
        capsys, "predict", tiny_classifier, manifest, "--out", out, "--fs", 500, "--quiet", "--device", "cpu"
    )
    assert code == 1
    assert_one_line_error(err, r"list\.txt: row 1: .*syn00003\.npy is outside the data root")
    assert not out.exists()
    code, _, err = run_main(
        capsys,
        "embed",
        tiny_classifier,
        manifest,
        "--out",
        out,
        "--fs",
        500,
        "--quiet",
        "--device",
        "cpu",
        "--allow-absolute-paths",
    )
    assert code == 0, err
    assert [r["record_id"] for r in read_rows(out)] == ["syn00003"]


# ---------------------------------------------------------------------------------------------
# 5. checkpoint vs data, unwritable output, full disk, offline hub
# ---------------------------------------------------------------------------------------------
def test_checkpoint_whose_label_count_does_not_match_the_store(make_store, tmp_path: Path, capsys) -> None:
    import torch

    from hubert_ecg.checkpoint import save_pretrained
    from hubert_ecg.model import create_model
    from hubert_ecg.synthetic import SYNTHETIC_LABELS

    store = make_store(6, seed=5, seconds=3.0, labels=SYNTHETIC_LABELS)  # the small_set records, 5 label columns
    torch.manual_seed(0)
    model = create_model("tiny", head={"num_labels": 3})
    model.info.task = "multi_label"
    ckpt = save_pretrained(model, tmp_path / "three")
    code, _, err = run_main(
        capsys,
        "evaluate",
        ckpt,
        store,
        "--split",
        "",
        "--out",
        tmp_path / "ev",
        "--bootstrap",
        0,
        "--device",
        "cpu",
    )
    assert code == 1
    assert_one_line_error(err, r"the model predicts 3 labels but .*store has 5 label columns")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_output_that_cannot_be_written(small_set: Path, tiny_classifier: Path, tmp_path: Path, capsys) -> None:
    """Root ignores file modes, so an unwritable directory is simulated by a path under a regular file
    (mkdir fails with ENOTDIR for root and for users alike)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, _, err = run_main(capsys, "prepare", small_set, "--out", blocker / "store", "--fs", 500, "--quiet")
    assert code == 1
    assert_one_line_error(err, r"file\.txt/store: cannot write here \(Not a directory\)")
    code, _, err = run_main(
        capsys,
        "predict",
        tiny_classifier,
        small_set / "syn00000.npy",
        "--fs",
        500,
        "--out",
        blocker / "sub" / "p.csv",
        "--quiet",
        "--device",
        "cpu",
    )
    assert code == 1
    assert_one_line_error(err, r"file\.txt/sub")
    assert blocker.read_text() == "not a folder"


class _FullDiskOS:
    """Stands in for ``hubert_ecg.atomic.os``: ``fsync`` of written data fails with ENOSPC after
    ``allowed`` successful calls, as a full disk does on flush (everything else is the real ``os``)."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        import errno

        if self.allowed <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.allowed -= 1
        os.fsync(fd)


def test_full_disk_during_prepare_leaves_no_half_file_and_the_rerun_completes(
    small_set: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import hubert_ecg.atomic as atomic

    args = ("prepare", small_set, "--fs", 500, "--shard-records", 2, "--quiet")
    code, _, err = run_main(capsys, *args, "--out", tmp_path / "clean")
    assert code == 0, err
    store = tmp_path / "full"
    # store.json + shard 0 (3 files, 2 fsyncs each incl. the directory) get through; shard 1 hits the full disk
    monkeypatch.setattr(atomic, "os", _FullDiskOS(allowed=8))
    code, _, err = run_main(capsys, *args, "--out", store)
    assert code == 1
    assert_one_line_error(err, r"No space left on device: '.*full/(shards/0000\d\.(npy|csv|rejects\.csv)|store\.json)'")
    assert leftovers(store) == []
    assert json.loads((store / "store.json").read_text())["complete"] is False
    assert not (store / "manifest.csv").exists()
    for npy in (store / "shards").glob("*.npy"):  # whatever reached its final name is complete
        np.testing.assert_array_equal(np.load(npy), np.load(tmp_path / "clean" / "shards" / npy.name))
    monkeypatch.undo()  # space freed: the same command finishes the store exactly as a clean run
    code, _, err = run_main(capsys, *args, "--out", store)
    assert code == 0, err
    for name in ("manifest.csv", "rejects.csv"):
        assert (store / name).read_text() == (tmp_path / "clean" / name).read_text()
    for npy in (tmp_path / "clean" / "shards").glob("*.npy"):
        assert (store / "shards" / npy.name).read_bytes() == npy.read_bytes()


def test_full_disk_during_predict_leaves_no_output(
    small_set: Path, tiny_classifier: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import hubert_ecg.atomic as atomic

    out = tmp_path / "pred.csv"
    monkeypatch.setattr(atomic, "os", _FullDiskOS(allowed=0))
    code, _, err = run_main(
        capsys, "predict", tiny_classifier, small_set, "--fs", 500, "--out", out, "--quiet", "--device", "cpu"
    )
    assert code == 1
    assert_one_line_error(err, r"No space left on device: '.*pred\.csv'")
    assert not out.exists() and leftovers(tmp_path) == []


def test_offline_hub_id_not_in_cache_says_how_to_download(tmp_path: Path) -> None:
    from hubert_ecg.hub import download_command  # `hf download` with huggingface_hub >= 1.0

    proc = cli(
        "info",
        "Edoardo-BS/hubert-ecg-small",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf")},
    )
    assert proc.returncode == 1
    assert_one_line_error(
        proc.stderr,
        r"Edoardo-BS/hubert-ecg-small: not in the local Hugging Face cache and "
        r"HF_HUB_OFFLINE is set; download it while online, e\.g\. "
        rf"`{re.escape(download_command())} "
        r"Edoardo-BS/hubert-ecg-small --local-dir DIR`",
    )
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))
