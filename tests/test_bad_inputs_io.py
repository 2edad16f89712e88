"""Input accounting and formats end to end: every file a walk sees is read, rejected or skipped with a
reason (skipped.csv, console counts); special files are never opened; nothing is guessed (--fs at parse
time, sidecars); implausible records get a quality reason and empty probabilities; hospital formats
read to the same signal. Each CLI case asserts exit code, a one-line message and what is on disk."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import _signal, _wfdb, wfdb_multi_segment
from format_files import STANDARD, write_edf, write_hl7, write_philips
from hubert_ecg.io import InputAccount, discover_sources, read_record
from test_robustness_inputs import assert_one_line_error, read_rows, run_main, tiny_classifier  # noqa: F401


def _good(folder: Path, name: str = "good") -> Path:
    return _wfdb(folder, name, _signal(seconds=3.0))


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """Two good records among everything a hospital share holds that is not an ECG."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    _good(root, "good1")
    _good(root / "sub", "good2")
    os.mkfifo(root / "pipe.csv")  # opening it would block discovery forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock.npy"))
    (root / "loop").symlink_to(root)  # a folder symlink back to the root
    (root / "self.hea").symlink_to(root / "self.hea")  # a symlink to itself (ELOOP)
    (root / "dangling.npy").symlink_to(root / "nowhere.npy")
    (root / "report.pdf").write_bytes(b"%PDF-1.4")
    (root / "metadata.csv").write_text("ECG_ID,Age\nx,50\n")
    (root / "notes.xml").write_text("<?xml version='1.0'?><notes/>")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "good1.atr").write_bytes(b"\0\0")  # annotation next to a header
    yield root
    server.close()


EXPECTED_SKIPS = {
    "pipe.csv": "not a regular file (FIFO)",
    "sock.npy": "not a regular file (socket)",
    "loop": "symlink loop (folder already searched)",
    "self.hea": "symlink loop",
    "dangling.npy": "broken symlink (target missing)",
    "report.pdf": "unsupported format (.pdf)",
    "metadata.csv": "not a recognised layout (no lead columns)",
    "notes.xml": "not a recognised layout (XML root <notes>)",
    ".DS_Store": "hidden file",
    "good1.atr": "unsupported format (.atr)",
}


def test_walk_accounts_for_every_path_and_never_opens_special_files(messy: Path) -> None:
    account = InputAccount()
    sources = discover_sources([messy], account=account)  # would hang on the FIFO if it opened it
    assert sorted(Path(s.path).name for s in sources) == ["good1.hea", "good2.hea"]
    assert {Path(p).name: reason for p, reason in account.skipped} == EXPECTED_SKIPS
    assert account.companions == 2  # the two .dat files, read with their headers
    assert account.counts()["not a regular file"] == 2 and account.counts()["symlink loop"] == 2
    with pytest.raises(ValueError, match=r"pipe\.csv: not a regular file \(FIFO\)$"):
        discover_sources([messy / "pipe.csv"])  # named explicitly: refused, still not opened


def test_unreadable_subfolder_and_file_are_listed(messy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores file modes, so permission errors are simulated where the walk meets them."""
    import hubert_ecg.io.sources as sources_module

    real_scandir, real_open = os.scandir, open

    def scandir(path):  # noqa: ANN001, ANN202
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def read_head(path):  # noqa: ANN001, ANN202
        if Path(path).name == "metadata.csv":
            raise PermissionError(13, "Permission denied", str(path))
        with real_open(path, "rb") as handle:
            return handle.read(4096)

    monkeypatch.setattr(sources_module.os, "scandir", scandir)
    monkeypatch.setattr(sources_module, "read_head", read_head)
    account = InputAccount()
    assert [Path(s.path).name for s in discover_sources([messy], account=account)] == ["good1.hea"]
    skipped = {Path(p).name: reason for p, reason in account.skipped}
    assert skipped["sub"] == "unreadable folder: permission denied"
    assert skipped["metadata.csv"] == "unreadable: permission denied"


def test_prepare_and_inspect_write_skipped_and_count_them(messy: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_main(capsys, "prepare", messy, "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    assert (
        "10 skipped (2 not a recognised layout, 2 not a regular file, 2 symlink loop, 2 unsupported format, "
        "1 broken symlink, 1 hidden file): not ECG records"
        in out
        and "2 records in 2 rows, 0 rejected" in out
    )
    rows = read_rows(tmp_path / "s" / "skipped.csv")
    assert {Path(r["path"]).name: r["reason"] for r in rows} == EXPECTED_SKIPS
    code, out, err = run_main(capsys, "inspect", messy)
    assert code == 0 and out.count("SKIP   ") == 10 and "2 readable, 0 rejected, 10 skipped" in out


def test_batch_that_accepts_nothing_exits_1(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", _signal().astype(np.float32))  # no --fs: rejected
    code, out, err = run_main(capsys, "prepare", folder, "--out", tmp_path / "s", "--quiet")
    assert code == 1
    assert_one_line_error(err, r"s: no record accepted \(1 rejected; reasons in .*rejects\.csv\)")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.pdf").write_bytes(b"%PDF")
    code, _, err = run_main(capsys, "inspect", empty)
    assert code == 1
    assert_one_line_error(err, r"no ECG records found under .*empty \(1 skipped \(1 unsupported format\)\)")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--fs", "0"], r"argument --fs: .*must be > 0, got 0"),
        (["--fs", "nan"], r"argument --fs: .*not a finite number"),
        (["--fs", "-500"], r"argument --fs: .*must be > 0"),
        (["--units", "NU"], r"argument --units: .*'NU' is not a voltage unit"),
        (["--format", "scp"], r"argument --format: invalid choice: 'scp'"),
    ],
)
def test_reader_options_are_checked_at_parse_time(args: list[str], pattern: str, tmp_path: Path, capsys) -> None:
    for command in (["inspect", tmp_path], ["prepare", tmp_path, "--out", tmp_path / "s"]):
        with pytest.raises(SystemExit) as info:
            run_main(capsys, *command, *args)
        assert info.value.code == 2
        import re

        assert re.search(pattern, capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_lead_names_format_and_sidecar_flags(tmp_path: Path, capsys) -> None:
    signal = _signal(seconds=3.0, fs=250.0)
    order = [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]
    path = tmp_path / "rec.dat.bin"
    np.save(tmp_path / "tmp.npy", signal[order].astype(np.float32))
    (tmp_path / "tmp.npy").rename(path)
    names = [STANDARD[i] for i in order]
    code, out, err = run_main(
        capsys, "inspect", path, "--format", "numpy", "--fs", 250, "--units", "mV", "--lead-names", *names
    )
    assert code == 0, err
    assert "OK     rec.dat: npy, 250 Hz" in out and "units mV" in out
    record = read_record(path, fmt="numpy", fs=250, lead_names=names)
    np.testing.assert_allclose(record.signal, signal, rtol=1e-6)
    # a sidecar gives what the file lacks; command-line options win over it
    sidecar_rec = tmp_path / "s.npy"
    np.save(sidecar_rec, signal.astype(np.float32) * 1000)
    (tmp_path / "s.json").write_text('{"fs": 250, "units": "uV", "leads": ' + str(STANDARD).replace("'", '"') + "}")
    record = read_record(sidecar_rec)
    assert record.fs == 250 and record.units == "mV" and record.meta["sidecar"].endswith("s.json")
    np.testing.assert_allclose(record.signal, signal, rtol=1e-5, atol=1e-6)
    assert read_record(sidecar_rec, fs=500).fs == 500


def test_implausible_records_are_flagged_with_empty_probabilities(
    tiny_classifier: Path,  # noqa: F811  (the fixture imported from test_robustness_inputs)
    tmp_path: Path,
    capsys,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _good(folder, "fine")
    _wfdb(folder, "leads_off", np.zeros((12, 2000)))
    np.savez(folder / "huge.npz", signal=_signal(seconds=3.0) * 1e6, fs=500.0, units="mV")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4")
    pred = tmp_path / "p.csv"
    code, out, err = run_main(capsys, "predict", tiny_classifier, folder, "--out", pred, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert "wrote 3 records" in out and "2 not scorable" in out and "1 skipped (1 unsupported format)" in out
    assert read_rows(Path(f"{pred}.skipped.csv")) == [
        {"path": str(folder / "scan.pdf"), "reason": "unsupported format (.pdf)"}
    ]
    rows = {r["record_id"]: r for r in read_rows(pred)}
    assert rows["leads_off"]["quality"] == "unscorable: all leads flat (leads off or no signal)"
    assert rows["huge"]["quality"].startswith("unscorable: amplitude far outside the ECG range")
    for rid in ("leads_off", "huge"):
        assert all(rows[rid][c] == "" for c in rows[rid] if c.startswith(("p_", "y_")))  # empty, not 0.5
    assert rows["fine"]["quality"] == "ok" and all(
        0 <= float(rows["fine"][c]) <= 1 for c in rows["fine"] if c.startswith("p_")
    )
    emb = tmp_path / "e.csv"
    code, out, err = run_main(capsys, "embed", tiny_classifier, folder, "--out", emb, "--quiet", "--device", "cpu")
    assert code == 0, err  # an embedding of a flat line means nothing: listed, not written
    assert [r["record_id"] for r in read_rows(emb)] == ["fine"]
    assert {r["record_id"] for r in read_rows(Path(f"{emb}.rejects.csv"))} == {"leads_off", "huge"}
    code, out, err = run_main(capsys, "prepare", folder, "--out", tmp_path / "s", "--quiet")
    assert code == 0, err
    rejects = {r["record_id"]: r["reason"] for r in read_rows(tmp_path / "s" / "rejects.csv")}
    assert rejects["leads_off"].endswith("not scorable: all leads flat (leads off or no signal)")
    code, out, _ = run_main(capsys, "inspect", folder / "leads_off.hea")
    assert code == 0 and "FLAG   leads_off" in out and "quality: unscorable: all leads flat" in out


def test_multi_segment_wfdb_is_read_with_each_segments_gains(tmp_path: Path) -> None:
    header = wfdb_multi_segment(tmp_path)
    record = read_record(header)
    signal = _signal()
    expected = np.hstack([signal[:, :2500], signal[:, 2500:] * 1.7])
    np.testing.assert_allclose(record.signal, expected, atol=2e-3)
    assert record.meta["multi_segment"] is True


def test_duplicate_exam_id_in_one_hdf5_keeps_both_exams(tmp_path: Path) -> None:
    import h5py

    a, b = _signal(seconds=8.0, fs=400.0), _signal(seconds=8.0, fs=400.0) * 0.5 + 0.1
    with h5py.File(tmp_path / "exams.hdf5", "w") as handle:
        handle["tracings"] = np.stack([a.T, b.T, a.T * 0]).astype(np.float32)[:, :3200]
        handle["exam_id"] = np.array([7, 7, 0])
    sources = discover_sources([tmp_path])
    assert [s.record_id for s in sources] == ["7", "7@row1"]
    first, second = (read_record(s.path, key=s.key) for s in sources)
    np.testing.assert_allclose(first.signal, a[:, :3200], atol=1e-5)
    np.testing.assert_allclose(second.signal, b[:, :3200], atol=1e-5)  # not the first exam again
    assert second.record_id == "7@row1" and "appears more than once" in second.meta["warnings"][0]


# ---------------------------------------------------------------------------------------------
# hospital formats: same signal back, lead mapping and units
# ---------------------------------------------------------------------------------------------
def test_hl7_aecg_reads_the_rhythm_series_with_units_and_extra_leads(tmp_path: Path) -> None:
    signal = _signal()
    record = read_record(write_hl7(tmp_path / "a.xml", signal, scale_uv=2.5))
    assert record.fs == 500 and record.units == "mV" and record.meta["format"] == "hl7-aecg"
    np.testing.assert_allclose(record.signal, signal, atol=2.5e-3 / 2 + 1e-6)  # half a 2.5 uV step
    # 8 stored leads (I, II, V1-V6) plus Frank X/Y/Z: limb leads derived, XYZ ignored with a warning
    eight = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    record = read_record(
        write_hl7(
            tmp_path / "b.xml",
            signal,
            leads=eight,
            extra={"X": signal[0], "Y": signal[1], "Z": signal[6]},
            increment='<increment value="2" unit="ms"/>',
        )
    )
    assert record.meta["derived_leads"] == ["III", "aVR", "aVL", "aVF"] and record.fs == 500
    assert "ignored 3 lead(s) beyond the standard 12: X, Y, Z" in record.meta["warnings"]
    np.testing.assert_allclose(record.signal[3], -(signal[0] + signal[1]) / 2, atol=3e-3)


def test_philips_xli_and_uncompressed_give_the_stored_counts(tmp_path: Path) -> None:
    signal = _signal(seconds=4.0)
    for compression in ("XLI", "none"):
        path, counts = write_philips(
            tmp_path / f"{compression}.xml", signal, compression=compression, resolution_uv=5.0
        )
        record = read_record(path)
        assert record.fs == 500 and record.units == "mV" and record.meta["format"] == "philips"
        np.testing.assert_allclose(record.signal, counts * 0.005, atol=1e-6)  # 5 uV per count, in mV
        assert record.meta["sex"] == "M" and record.meta["age"] == 64.0
        assert record.meta["diagnosis_statements"] == ["Sinus rhythm"]
    # XLI rebuilds III/aVR/aVL/aVF by position: another limb order is refused, not silently wrong
    path, _ = write_philips(tmp_path / "order.xml", signal, labels=STANDARD[1:2] + STANDARD[:1] + STANDARD[2:])
    with pytest.raises(ValueError, match=r"order\.xml: XLI limb leads in an unexpected order \(II I III"):
        read_record(path)


def test_edf_and_bdf_units_labels_and_non_ecg_channels(tmp_path: Path) -> None:
    signal = _signal(seconds=4.0)
    record = read_record(write_edf(tmp_path / "a.edf", signal, unit="uV", extra={"SpO2": np.full(2000, 97.0)}))
    assert record.fs == 500 and record.units == "mV" and record.meta["format"] == "edf"
    np.testing.assert_allclose(record.signal, signal, atol=2e-3)  # 16-bit over +-10 mV
    assert record.meta["warnings"] == ["ignored 1 non-ECG signal(s): SpO2"]
    record = read_record(
        write_edf(tmp_path / "b.bdf", signal, unit="mV", bdf=True, labels=[f"EKG {n.upper()}" for n in STANDARD])
    )
    assert record.meta["format"] == "bdf"
    np.testing.assert_allclose(record.signal, signal, atol=1e-3)  # quantised by the writer's digital range


def test_registry_dispatch_and_one_registration_per_format(tmp_path: Path) -> None:
    from hubert_ecg.io.registry import format_names, get_format, identify, xml_root_name

    assert format_names() == ["wfdb", "mat", "numpy", "text", "hdf5", "dicom", "muse", "hl7", "philips", "edf"]
    assert get_format(".BDF").name == "edf" and get_format("aecg").name == "hl7" and get_format("nope") is None
    path = write_hl7(tmp_path / "utf16", _signal(seconds=2.0), encoding="utf-16")  # no suffix, UTF-16 + BOM
    assert xml_root_name(path.read_bytes()[:4096]) == "AnnotatedECG"
    assert identify(path).name == "hl7"
    assert read_record(path).meta["format"] == "hl7-aecg"


def test_fifo_named_in_a_manifest_or_read_directly_is_refused_without_opening(tmp_path: Path, capsys) -> None:
    _good(tmp_path, "good")
    os.mkfifo(tmp_path / "pipe.hea")
    os.mkfifo(tmp_path / "pipe.npy")
    (tmp_path / "list.csv").write_text("path\ngood.hea\npipe.npy\n")
    with pytest.raises(ValueError, match=r"pipe\.npy: not a regular file \(FIFO\)$"):
        discover_sources([tmp_path / "list.csv"])
    for name in ("pipe.npy", "pipe.hea"):
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: not a regular file"):
            read_record(tmp_path / name, fmt="numpy" if name.endswith("npy") else None)
    code, _, err = run_main(capsys, "inspect", tmp_path / "pipe.npy")
    assert code == 1
    assert_one_line_error(err, r"pipe\.npy: not a regular file \(FIFO\)")


def test_quality_label_summarises_each_kind(tmp_path: Path) -> None:
    from bad_inputs import partial_nan, wfdb_gain_0
    from hubert_ecg.io import quality_label

    assert quality_label(read_record(_good(tmp_path, "fine"))) == "ok"
    assert quality_label(read_record(partial_nan(tmp_path))).startswith("warning: 40 NaN sample(s) in lead(s) aVL")
    gain0 = read_record(wfdb_gain_0(tmp_path))
    assert gain0.units == "unknown" and quality_label(gain0).startswith("uncalibrated: WFDB gain 0 for signal(s) I, II")
    flat = read_record(_wfdb(tmp_path, "flat", np.full((12, 1000), 0.2)))
    assert quality_label(flat) == "unscorable: all leads flat (leads off or no signal)"


def test_predict_stops_on_a_bug_instead_of_filing_it_as_a_rejected_record(
    tiny_classifier: Path,  # noqa: F811
    tmp_path: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """predict/embed file only RecordError/PreprocessError as rejects, like prepare (a plain ValueError is ours)."""
    import hubert_ecg.reading as reading
    from hubert_ecg.synthetic import write_synthetic_dataset

    folder = write_synthetic_dataset(tmp_path / "in", 2, fmt="wfdb")

    def buggy(*args: object, **kwargs: object) -> None:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(reading, "preprocess_signal", buggy)
    out = tmp_path / "pred.csv"
    code, _, err = run_main(capsys, "predict", tiny_classifier, folder, "--out", out, "--quiet", "--device", "cpu")
    assert code == 1 and "operands could not be broadcast together" in err  # the job stops, it does not skip
    assert not out.exists() and not (tmp_path / "pred.rejects.csv").exists()
