"""A file whose name is not valid UTF-8 (Latin-1 from an old share) is listed with its reason, never a crash.

Its name would reach every table and record id the job writes; `prepare` used to stop with
"'utf-8' codec can't encode character '\\udcff'", naming no file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.cli import main
from hubert_ecg.synthetic import synthetic_record

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "good.npy", synthetic_record(rng, seconds=3.0).signal)
    raw = os.fsencode(tmp_path) + b"/bad\xffname.npy"
    with open(raw, "wb") as fh:
        np.save(fh, synthetic_record(rng, seconds=3.0).signal)
    return tmp_path


def test_prepare_skips_and_lists_a_non_utf8_name(folder: Path, tmp_path: Path) -> None:
    from hubert_ecg.store import ECGStore

    out = tmp_path.parent / f"{tmp_path.name}-store"
    assert main(["prepare", str(folder), "--out", str(out), "--fs", "500", "--quiet"]) == 0
    assert list(ECGStore(out).record_ids) == ["good"]
    skipped = (out / "skipped.csv").read_text(encoding="utf-8")
    assert "bad\\xffname.npy,file name is not valid UTF-8" in skipped


def test_a_non_utf8_name_given_explicitly_is_a_one_line_error(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = os.fsdecode(os.fsencode(folder) + b"/bad\xffname.npy")
    out = tmp_path.parent / f"{tmp_path.name}-store"
    assert main(["prepare", bad, "--out", str(out), "--fs", "500", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad\\xffname.npy: file name is not valid UTF-8" in err


def test_an_array_file_with_two_different_signals_is_refused_not_guessed(tmp_path: Path) -> None:
    from hubert_ecg.io import RecordError, read_record

    signal = synthetic_record(np.random.default_rng(1), seconds=3.0).signal
    np.savez(tmp_path / "two.npz", val=signal, ecg=signal * 2.0, fs=500)
    with pytest.raises(RecordError, match=r"two\.npz: several signal arrays \(val, ecg\)"):
        read_record(tmp_path / "two.npz")
    np.savez(tmp_path / "copies.npz", val=signal, ecg=signal, fs=500)  # the same array twice is one signal
    np.testing.assert_array_equal(read_record(tmp_path / "copies.npz").signal.shape, signal.shape)


def test_the_recorded_command_line_is_escaped_and_does_not_outlive_its_call(folder: Path, tmp_path: Path) -> None:
    from hubert_ecg.runs import current_command, set_command

    bad = os.fsdecode(os.fsencode(folder) + b"/bad\xffname.npy")
    set_command(["hubert-ecg", "prepare", bad])
    assert current_command()[-1].endswith("bad\\xffname.npy")  # writable to run.json and the model card
    set_command(None)
    out = tmp_path.parent / f"{tmp_path.name}-store"
    main(["prepare", str(folder), "--out", str(out), "--fs", "500", "--quiet"])
    assert "prepare" not in current_command()  # a library call made afterwards records its own command


@pytest.mark.parametrize(
    ("reader", "what", "kind"),
    [
        ("read_muse", "MUSE XML", "a MUSE XML ECG"),
        ("read_philips", "Philips XML", "a Philips XML ECG"),
        ("read_hl7_aecg", "HL7 aECG XML", "an HL7 aECG file"),
    ],
)
def test_xml_readers_name_a_malformed_file_and_another_kind_of_xml(
    tmp_path: Path, reader: str, what: str, kind: str
) -> None:
    import importlib

    from hubert_ecg.io import RecordError

    read = getattr(importlib.import_module(f"hubert_ecg.io.{reader.removeprefix('read_')}"), reader)
    (tmp_path / "cut.xml").write_text("<root><unclosed>")
    with pytest.raises(RecordError, match=rf"cut\.xml: malformed {what}: ParseError"):
        read(tmp_path / "cut.xml")
    (tmp_path / "other.xml").write_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>')
    with pytest.raises(RecordError, match=rf"other\.xml: not {kind} \(root element <svg>"):
        read(tmp_path / "other.xml")
