"""Record discovery (folders, manifests, multi-record HDF5) and format dispatch."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import wfdb

from conftest import shared_path
from hubert_ecg.io import RecordError, RecordSource, detect_format, discover_sources, read_record, read_source

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _signal(rng: np.random.Generator, n: int = 500) -> np.ndarray:
    base = rng.standard_normal((2, n)) * 0.3
    limb = np.stack(
        [base[0], base[1], base[1] - base[0], -(base[0] + base[1]) / 2, base[0] - base[1] / 2, base[1] - base[0] / 2]
    )
    return np.vstack([limb, rng.standard_normal((6, n)) * 0.3])


@pytest.fixture
def mixed_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "data"
    (root / "wfdb").mkdir(parents=True)
    (root / "other" / "deeper").mkdir(parents=True)
    wfdb.wrsamp(
        "w1",
        fs=500,
        units=["mV"] * 12,
        sig_name=LEADS,
        p_signal=_signal(rng).T,
        fmt=["16"] * 12,
        write_dir=str(root / "wfdb"),
    )
    (root / "wfdb" / "w1.i").write_bytes(b"\x00\x01")  # an LUDB-style annotation file
    counts = np.round(_signal(rng) * 1000).astype(np.int16)
    scipy.io.savemat(root / "wfdb" / "c1.mat", {"val": counts}, format="4")
    (root / "wfdb" / "c1.hea").write_text(
        "c1 12 500 500\n" + "".join(f"c1.mat 16+24 1000/mV 16 0 0 0 0 {n}\n" for n in LEADS)
    )
    scipy.io.savemat(root / "other" / "bare.mat", {"val": counts})
    np.save(root / "other" / "a.npy", _signal(rng).astype(np.float32))
    np.savez(root / "other" / "deeper" / "b.npz", signal=_signal(rng))
    np.savetxt(root / "other" / "t.csv", _signal(rng).T, delimiter=",", header=",".join(LEADS), comments="")
    (root / "other" / "metadata.csv").write_text("ECG_ID,Age,Sex\nx.h5,50,M\n")
    (root / "other" / "notes.xml").write_text("<notes/>")
    (root / "other" / ".hidden.npy").write_bytes(b"")
    (root / "other" / "README").write_text("read me")
    with h5py.File(root / "other" / "code15.hdf5", "w") as handle:
        handle["tracings"] = np.zeros((3, 4096, 12), np.float32) + 0.1
        handle["exam_id"] = np.array([11, 22, 0])
    with h5py.File(root / "other" / "sph.h5", "w") as handle:
        handle["ecg"] = _signal(rng).astype(np.float16)
    return root


def test_folder_walk_finds_each_record_once(mixed_folder: Path) -> None:
    sources = discover_sources([mixed_folder])
    found = [(Path(s.path).relative_to(mixed_folder).as_posix(), s.key, s.record_id) for s in sources]
    assert found == [
        ("other/a.npy", None, "a"),
        ("other/bare.mat", None, "bare"),
        ("other/code15.hdf5", "11", "11"),
        ("other/code15.hdf5", "22", "22"),
        ("other/sph.h5", None, "sph"),
        ("other/t.csv", None, "t"),
        ("other/deeper/b.npz", None, "b"),
        ("wfdb/c1.hea", None, "c1"),
        ("wfdb/w1.hea", None, "w1"),
    ]
    assert [Path(s.path).name for s in discover_sources([mixed_folder / "other"], recursive=False)] == [
        "a.npy",
        "bare.mat",
        "code15.hdf5",
        "code15.hdf5",
        "sph.h5",
        "t.csv",
    ]
    # Naming companions explicitly resolves to the record; duplicates collapse.
    wfdb_dir = mixed_folder / "wfdb"
    again = discover_sources([wfdb_dir / "w1.dat", wfdb_dir / "w1", wfdb_dir / "c1.mat"])
    assert [(Path(s.path).name, s.record_id) for s in again] == [("w1.hea", "w1"), ("c1.hea", "c1")]


def test_sources_pickle_and_read(mixed_folder: Path) -> None:
    sources = discover_sources([mixed_folder])
    assert pickle.loads(pickle.dumps(sources)) == sources
    code15 = next(s for s in sources if s.key == "22")
    record = read_source(code15)
    assert record.record_id == "22" and record.source == code15.source and record.fs == 400.0
    np.testing.assert_allclose(record.signal, 0.1, rtol=1e-6)
    with pytest.raises(RecordError, match=r"bare\.mat: sampling rate unknown"):
        read_source(next(s for s in sources if s.record_id == "bare"))
    assert read_source(next(s for s in sources if s.record_id == "bare"), fs=500).fs == 500.0


def test_manifests(mixed_folder: Path, tmp_path: Path) -> None:
    manifest = mixed_folder / "list.csv"
    manifest.write_text("path,record_id,label\nwfdb/w1,first,1\nother/a.npy,,0\nother/code15.hdf5,,1\n")
    sources = discover_sources([manifest])
    assert [(Path(s.path).name, s.key, s.record_id) for s in sources] == [
        ("w1.hea", None, "first"),
        ("a.npy", None, "a"),
        ("code15.hdf5", "11", "11"),
        ("code15.hdf5", "22", "22"),
    ]
    assert read_source(sources[0]).record_id == "first"

    keyed = mixed_folder / "keyed.csv"
    keyed.write_text("filename,exam_id\nother/code15.hdf5,22\n")
    assert discover_sources([keyed]) == [RecordSource(str(mixed_folder / "other" / "code15.hdf5"), "22", "22")]

    listing = mixed_folder / "files.txt"
    listing.write_text("other/sph.h5\nwfdb/c1.hea\n")
    assert [Path(s.path).name for s in discover_sources([listing])] == ["sph.h5", "c1.hea"]

    broken = mixed_folder / "broken.csv"
    broken.write_text("path\nother/a.npy\nother/missing.npy\n")
    with pytest.raises(RecordError, match=r"broken\.csv: row 3: other/missing\.npy not found$"):
        discover_sources([broken])
    with pytest.raises(RecordError, match=r"nowhere: input not found$"):
        discover_sources([tmp_path / "nowhere"])


def test_dispatch_and_format_errors(mixed_folder: Path, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    suffixless = tmp_path / "ecg_no_suffix"
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), suffixless)
    assert detect_format(suffixless) == "dicom"
    assert read_record(suffixless).fs == 1000.0
    (tmp_path / "mystery.bin").write_bytes(b"\x00" * 300)
    with pytest.raises(
        RecordError,
        match=r"mystery\.bin: unrecognised ECG file format \(suffix \.bin\); "
        r"name it with --format "
        r"\(one of wfdb, mat, numpy, text, hdf5, dicom, muse, hl7, philips, edf\)$",
    ):
        read_record(tmp_path / "mystery.bin")
    # fmt= forces a reader regardless of the suffix.
    np.save(tmp_path / "x.npy", _signal(np.random.default_rng(1)))
    shutil.move(tmp_path / "x.npy", tmp_path / "x.bin")
    assert read_record(tmp_path / "x.bin", fmt="npy", fs=500).signal.shape == (12, 500)
    with pytest.raises(RecordError, match=r"x\.bin: unknown format 'scp' \(--format\); use one of wfdb, "):
        read_record(tmp_path / "x.bin", fmt="scp")
    with pytest.raises(RecordError, match=r"a\.npy: key='3' only applies to multi-record HDF5 files"):
        read_record(mixed_folder / "other" / "a.npy", key="3")
    with pytest.raises(RecordError, match=r"gone\.npy: file not found$"):
        read_record(tmp_path / "gone.npy")
    with pytest.raises(RecordError, match=r"gone: file not found$"):
        read_record(tmp_path / "gone")


# ---------------------------------------------------------------- real data


def test_real_folders_and_ptbxl_manifest() -> None:
    ludb = discover_sources([shared_path("ludb")])
    assert len(ludb) == 200 and all(s.path.endswith(".hea") for s in ludb)  # .dat, annotations, ludb.csv skipped
    cinc = discover_sources([shared_path("cinc2021-smoke")])
    assert sum(s.path.endswith(".hea") for s in cinc) == 70 and sum(s.path.endswith(".h5") for s in cinc) == 10
    assert len(cinc) == 80  # SPH/metadata.csv is not a record
    manifest = shared_path("ptbxl-unlabelled-100hz", "records.csv")
    ptbxl = discover_sources([manifest])
    assert len(ptbxl) == 1819 and ptbxl[0].record_id == "00009_lr"
    record = read_source(ptbxl[0])
    assert record.units == "unknown" and record.fs == 100.0
