"""Readers for bare arrays: NumPy ``.npy`` / ``.npz`` and MATLAB ``.mat`` without a header."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io._build import build_record
from hubert_ecg.io.leads import STANDARD_LEADS
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_numpy", "read_matlab", "orient_leads_first", "REFERENCE_FS"]

#: Sampling rate of the reference ``.npy`` layout (preprocessed, (12, N) at 500 Hz); never assumed
#: by the reader, but ``prepare --already-preprocessed`` passes it.
REFERENCE_FS = 500.0
# Array names tried in order inside .npz / .mat containers.
_SIGNAL_KEYS = ("val", "signal", "ecg", "data", "x", "X", "arr_0")
_FS_KEYS = (
    "fs",
    "Fs",
    "FS",
    "sampling_rate",
    "sampling_frequency",
    "sample_rate",
    "samplerate",
    "sfreq",  # MNE
    "srate",  # EEGLAB
    "frequency",
)
_LEAD_KEYS = ("lead_names", "leads", "sig_name", "channels")


def orient_leads_first(path: str | Path, array: np.ndarray, n_leads: int = 12) -> np.ndarray:
    """Return ``array`` as ``(n_leads, n_samples)``, transposing ``(n_samples, n_leads)``.

    A square array is taken as leads-first (the reference layout). Leading singleton axes
    (e.g. a batch of one) are dropped.

    Raises:
        RecordError: the array has no axis of length ``n_leads`` or is not 2-D.
    """
    arr = np.asarray(array)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise RecordError(path, f"expected a 2-D (leads x samples) array, got shape {arr.shape}")
    if arr.shape[0] == n_leads:
        return arr
    if arr.shape[1] == n_leads:
        return arr.T
    if 0 in arr.shape:
        raise RecordError(path, f"zero-length signal (array shape {arr.shape})")
    raise RecordError(path, f"wrong lead count: expected {n_leads} leads on one axis, got shape {arr.shape}")


def _as_str_list(value: Any) -> list[str]:
    """Lead names from a stored array: text, bytes (``np.savez`` of encoded names, HDF5), MATLAB cell
    arrays (object arrays of 1-element arrays) or char matrices (one padded row per name)."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U" and arr.ndim == 2 and arr.shape[1] > 1 and all(len(c) == 1 for c in arr.ravel()):
        return ["".join(row).strip() for row in arr]
    out = []
    for item in arr.ravel():
        while isinstance(item, np.ndarray) and item.size == 1:
            item = item.ravel()[0]
        if isinstance(item, np.ndarray):
            item = "".join(str(c) for c in item.ravel())
        out.append(item.decode("utf-8", "replace").strip() if isinstance(item, bytes) else str(item).strip())
    return out


def _stored_fs(path: str | Path, arrays: dict[str, Any]) -> float | None:
    """The rate an ``fs`` (or similar) entry stores: one number, or one per lead when they all agree."""
    key = next((k for k in _FS_KEYS if k in arrays), None)
    if key is None:
        return None
    try:
        values = np.asarray(arrays[key], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise RecordError(path, f"entry {key!r} is not a sampling rate ({arrays[key]!r})") from None
    if values.size == 0:
        raise RecordError(path, f"entry {key!r} is empty")
    if np.unique(values).size != 1:
        raise RecordError(path, f"entry {key!r} holds different sampling rates {sorted(set(values.tolist()))[:5]} Hz")
    return float(values[0])


def _pick_signal(path: str | Path, arrays: dict[str, Any]) -> tuple[str, np.ndarray]:
    named = [k for k in _SIGNAL_KEYS if k in arrays]
    signals = [k for k in named if np.asarray(arrays[k]).ndim >= 2]
    if any(not np.array_equal(np.asarray(arrays[k]), np.asarray(arrays[signals[0]])) for k in signals[1:]):
        # Which one is the ECG cannot be told from the file (a raw and a filtered copy, two recordings ...).
        raise RecordError(path, f"several signal arrays ({', '.join(signals)}): keep only the ECG in the file")
    if named:
        key = signals[0] if signals else named[0]
        return key, np.asarray(arrays[key])
    candidates = [
        (k, np.asarray(v))
        for k, v in arrays.items()
        if not k.startswith("__") and np.asarray(v).ndim >= 2 and np.asarray(v).dtype.kind in "iuf"
    ]
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(sorted(k for k in arrays if not k.startswith("__"))) or "none"
    raise RecordError(path, f"no signal array found (looked for {', '.join(_SIGNAL_KEYS)}; file has: {names})")


def _build_from_arrays(
    path: Path,
    arrays: dict[str, Any],
    *,
    fmt: str,
    default_fs: float | None,
    fs: float | None,
    units: str | None,
    lead_names: Sequence[str] | None,
    allow_missing_leads: bool,
) -> Record:
    key, signal = _pick_signal(path, arrays)
    if signal.dtype.kind not in "iuf":
        raise RecordError(path, f"array {key!r} is not numeric (dtype {signal.dtype})")
    names = list(lead_names) if lead_names is not None else None
    if names is None:
        stored = next((arrays[k] for k in _LEAD_KEYS if k in arrays), None)
        names = _as_str_list(stored) if stored is not None else None
    signal = orient_leads_first(path, signal, len(names) if names else len(STANDARD_LEADS))
    if signal.shape[1] == 0:
        raise RecordError(path, f"zero-length signal (array shape {signal.shape})")
    file_fs = _stored_fs(path, arrays)
    rate = fs if fs is not None else file_fs if file_fs is not None else default_fs
    if rate is None:
        raise RecordError(
            path,
            "sampling rate unknown: the file stores none (no 'fs' entry); "
            f'pass --fs HZ or a sidecar {path.stem}.json with {{"fs": HZ}}',
        )
    file_units: str | list[str] | None = None
    if "units" in arrays:
        stated = _as_str_list(arrays["units"])
        file_units = stated[0] if len(set(stated)) == 1 else stated
    meta: dict[str, Any] = {
        "format": fmt,
        "array_name": key,
        "fs_source": "file" if fs is None else "given (--fs or sidecar)",
    }
    return build_record(
        path,
        signal,
        names,
        fs=rate,
        channel_units=file_units,
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def read_numpy(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read a ``.npy`` array or a ``.npz`` archive.

    The layout is ``(12, N)`` in standard lead order; ``(N, 12)`` is transposed. An ``.npz`` may
    also hold ``fs``, ``lead_names`` and ``units`` entries next to its signal (named ``signal``,
    ``ecg``, ``val``, ``data`` or the only 2-D array). Arguments override what the file stores.
    A sampling rate is never assumed: a ``.npy`` (and an ``.npz`` without ``fs``) needs ``fs``
    (``--fs`` or a sidecar JSON), even for the reference's 500 Hz files. Units default to
    "unknown" (reference files are scaled).
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays: dict[str, Any] = {"signal": loaded}
        else:
            # Members of an .npz are decompressed lazily: read them inside the try.
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except Exception as exc:  # truncated/corrupt files raise ValueError, EOFError, BadZipFile...
        raise RecordError(path, f"cannot read NumPy file: {type(exc).__name__}: {exc}") from None
    return _build_from_arrays(
        path,
        arrays,
        fmt="npz" if path.suffix.lower() == ".npz" else "npy",
        default_fs=None,
        fs=fs,
        units=units,
        lead_names=lead_names,
        allow_missing_leads=allow_missing_leads,
    )


def read_matlab(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read a bare MATLAB ``.mat`` (v4, v5 or v7.3) holding a ``val`` array (12, N).

    Without a WFDB header there is no calibration: pass ``fs`` (unless the file stores an
    ``fs`` variable) and ``units`` (CinC ``val`` arrays are ADC counts, 1000 per mV, so
    scale them yourself or read them through their ``.hea``).
    """
    path = Path(path)
    try:
        from scipy.io import loadmat

        arrays = loadmat(str(path))
    except Exception as exc:
        # scipy refuses v7.3 files (HDF5 inside); any other failure is a damaged file.
        if not _is_hdf5(path):
            raise RecordError(path, f"cannot read MATLAB file: {type(exc).__name__}: {exc}") from None
        arrays = _load_mat73(path)
    return _build_from_arrays(
        path,
        arrays,
        fmt="mat",
        default_fs=None,
        fs=fs,
        units=units,
        lead_names=lead_names,
        allow_missing_leads=allow_missing_leads,
    )


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """HDF5 signature at offset 0 or at a user-block boundary (MATLAB v7.3 writes a 512-byte block)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2048 + len(_HDF5_SIGNATURE))
    except OSError:
        return False
    return any(head[at : at + len(_HDF5_SIGNATURE)] == _HDF5_SIGNATURE for at in (0, 512, 1024, 2048))


def _load_mat73(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            # MATLAB writes column-major, so h5py sees every matrix transposed.
            out: dict[str, Any] = {}
            for k, v in handle.items():
                if not isinstance(v, h5py.Dataset):
                    continue
                value = np.asarray(v).T
                if v.attrs.get("MATLAB_class") in (b"char", "char"):
                    # A char matrix is stored as UTF-16 code units, one row per string.
                    value = np.array(["".join(map(chr, row)).strip() for row in np.atleast_2d(value)])
                out[k] = value
            return out
    except (OSError, ValueError, KeyError, TypeError) as exc:  # h5py's errors for damaged files
        raise RecordError(path, f"cannot read MATLAB v7.3 file: {type(exc).__name__}: {exc}") from None
