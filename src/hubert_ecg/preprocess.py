"""Signal preprocessing as data, and windowing into model inputs.

The published HuBERT-ECG models were trained on inputs built in two places: an offline step
(band-pass FIR, FFT resampling to 500 Hz, per-lead min-max scaling to [-1, 1]) and the data loader
(crop 5 s, flatten the 12 leads end to end, decimate the flattened vector by 5 to 100 Hz). Here the
whole chain is described by one serialisable :class:`PreprocessSpec` that is stored in every
checkpoint and replayed by every command that feeds a model, so training and inference cannot drift.

Pipeline of :func:`preprocess_signal` / :func:`preprocess_batch`, for a record ``(12, n)`` at ``fs``:

1. non-finite samples (NaN, +-inf) are replaced according to ``nan_policy``;
2. optional baseline-wander high-pass (zero-phase Butterworth), off by default;
3. band-pass FIR exactly as the published offline step (biosppy's ``filter_signal``: Hamming
   ``firwin`` with ``int(0.3 * fs)`` taps made odd, applied with ``filtfilt``);
4. FFT resampling to ``resample_hz`` (``scipy.signal.resample`` to ``int(n * resample_hz / fs)``);
5. per-lead scaling over the whole record (``minmax`` to [-1, 1], ``zscore`` or ``none``);
6. anti-aliased decimation to ``target_hz`` (``scipy.signal.decimate`` defaults), either per lead
   or, for exact reproduction of published inputs, on the flattened 5 s window.

The output is the whole record ``(12, m)`` at ``target_hz``; :func:`window_starts` and
:func:`cut_windows` then cut it into flattened model inputs ``(W, 12 * T)`` with sample-level
attention masks, and :func:`hubert_ecg.config.token_mask_from_sample_mask` turns those into token-level
masks (conv-stem geometry lives in :mod:`hubert_ecg.config`).

Values: min-max scaling happens at ``resample_hz`` (as published), so before decimation every lead
lies in [-1, 1]; the 40 Hz Chebyshev anti-alias filter that follows can ring slightly past +-1 at
sharp edges (a few per cent on real ECGs, the same as in the published inputs).

Throughput (one core, ``taskset`` + ``OMP_NUM_THREADS=1``, batches of 64, float64 internally, on the
2-core development machine): :func:`preprocess_batch` with the default or the reference spec handles
about 150-210 records/s for 10 s, 500 Hz, 12-lead records (~5 ms each: band-pass ``filtfilt`` with 151
taps ~3 ms, decimation ~1 ms; resampling is skipped when the rate already is ``resample_hz``), and
about 40-55 records/s for 10 s at 1000 Hz (301 taps plus FFT resampling). A batch needs about
``3 * B * 12 * n * 8`` bytes of scratch memory, so feed it chunks of a few hundred records.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "LEAD_NAMES",
    "MissingLeadWarning",
    "PreprocessError",
    "PreprocessSpec",
    "bandpass_taps",
    "cut_windows",
    "fir_numtaps",
    "flatten_window",
    "missing_leads",
    "preprocess_batch",
    "preprocess_signal",
    "unflatten_window",
    "window_starts",
    "LEAD_SETS",
    "parse_lead_set",
    "lead_keep_mask",
    "zero_leads",
    "lead_dropout_mask",
    "apply_lead_dropout",
]

LEAD_NAMES: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
N_LEADS = len(LEAD_NAMES)

# The published min-max formula adds this to the range so that a flat lead does not divide by zero.
_SCALE_EPS = 1e-8
# Butterworth order of the optional baseline high-pass; filtfilt doubles the effective order.
_BASELINE_ORDER = 2
_SCALINGS = ("minmax", "zscore", "none")
_DECIMATIONS = ("per_lead", "flattened")
_NAN_POLICIES = ("lead_mean", "zero", "raise")
_WINDOW_MODES = ("first", "random", "sliding", "all_non_overlapping")


class PreprocessError(ValueError):
    """Bad preprocessing input or spec; the message names the offending value."""


class MissingLeadWarning(UserWarning):
    """A lead had no finite sample at all and was replaced by zeros."""


def _is_integral(value: float, tol: float = 1e-6) -> bool:
    return abs(value - round(value)) <= tol


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a raw 12-lead record into model input, as plain data.

    Stored in every checkpoint's ``config.json`` (:meth:`to_dict`) and replayed from it
    (:meth:`from_dict`). The defaults follow the published pipeline except that decimation runs per
    lead (no smearing across lead junctions); :meth:`reference` reproduces the published inputs
    exactly.

    Attributes:
        bandpass_hz: ``(low, high)`` edges of the zero-phase FIR band-pass, or ``None`` for none.
            ``low = 0`` gives a low-pass. At rates where ``high >= fs / 2`` the low-pass edge is
            meaningless (nothing lies above Nyquist) and only the high-pass edge is applied. Note that
            the published 0.05 Hz edge with 0.3 s of taps barely acts (DC gain 0.96): it is in effect
            a 47 Hz low-pass; use ``baseline_highpass_hz`` for real baseline-wander removal.
        filter_taps_factor: FIR length in seconds; taps = ``int(factor * fs)``, plus one when even.
        resample_hz: rate of the FFT resampling step, or ``None`` to stay at the record's rate
            (then ``fs / target_hz`` must be an integer).
        scaling: ``"minmax"`` (per lead, whole record, ``2 (x - min) / (max - min + 1e-8) - 1``),
            ``"zscore"`` (per lead, ``(x - mean) / (std + 1e-8)``) or ``"none"``.
        target_hz: model input rate; ``resample_hz / target_hz`` must be an integer.
        decimation: ``"per_lead"`` or ``"flattened"`` (published: decimate each flattened
            ``window_s`` block, which smears the anti-alias filter across lead junctions).
        baseline_highpass_hz: cut-off of an optional zero-phase Butterworth (order 2, applied
            forward and backward) high-pass run before the band-pass, e.g. 0.5.
        window_s: model window length in seconds (5 s for the released models).
        min_window_s: shortest record accepted. Default 1.5 s: at 100 Hz a lead padded inside the
            flattened window then still holds 150 >= 82 + 63 valid samples, so whatever its offset
            to the 64-sample token grid at least one token's whole 82-sample receptive field lies
            inside every lead; it also exceeds the ``filtfilt`` padding of the FIR (3 x 0.3 s).
        nan_policy: non-finite samples become the mean of the lead's finite samples
            (``"lead_mean"``), zero (``"zero"``), or raise (``"raise"``); a lead with no finite
            sample becomes zeros and a :class:`MissingLeadWarning` names it.
    """

    bandpass_hz: tuple[float, float] | None = (0.05, 47.0)
    filter_taps_factor: float = 0.3
    resample_hz: float | None = 500.0
    scaling: str = "minmax"
    target_hz: float = 100.0
    decimation: str = "per_lead"
    baseline_highpass_hz: float | None = None
    window_s: float = 5.0
    min_window_s: float = 1.5
    nan_policy: str = "lead_mean"

    def __post_init__(self) -> None:
        # Normalise numeric types so that equality and JSON round trips are exact.
        if self.bandpass_hz is not None:
            band = self.bandpass_hz
            if isinstance(band, (str, bytes)) or not isinstance(band, Sequence) or len(band) != 2:
                raise PreprocessError(f"bandpass_hz must be None or (low, high) in Hz, got {band!r}")
            low, high = (_as_float("bandpass_hz", v) for v in band)
            if not (0.0 <= low < high):
                raise PreprocessError(f"bandpass_hz must satisfy 0 <= low < high, got {band!r}")
            object.__setattr__(self, "bandpass_hz", (low, high))
        for name in ("filter_taps_factor", "target_hz", "window_s", "min_window_s"):
            value = _as_float(name, getattr(self, name))
            if value <= 0:
                raise PreprocessError(f"{name} must be > 0, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("resample_hz", "baseline_highpass_hz"):
            raw = getattr(self, name)
            if raw is not None:
                value = _as_float(name, raw)
                if value <= 0:
                    raise PreprocessError(f"{name} must be None or > 0, got {value!r}")
                object.__setattr__(self, name, value)
        _check_choice("scaling", self.scaling, _SCALINGS)
        _check_choice("decimation", self.decimation, _DECIMATIONS)
        _check_choice("nan_policy", self.nan_policy, _NAN_POLICIES)

        if self.resample_hz is not None:
            ratio = self.resample_hz / self.target_hz
            if ratio < 1 - 1e-9 or not _is_integral(ratio):
                raise PreprocessError(
                    f"resample_hz / target_hz must be a positive integer, got {self.resample_hz:g} / {self.target_hz:g}"
                )
        if not _is_integral(self.window_s * self.target_hz):
            raise PreprocessError(
                f"window_s * target_hz must be a whole number of samples, got {self.window_s:g} * {self.target_hz:g}"
            )
        if self.decimation == "flattened" and self.resample_hz is not None:
            if not _is_integral(self.window_s * self.resample_hz):
                raise PreprocessError(
                    "window_s * resample_hz must be a whole number of samples, "
                    f"got {self.window_s:g} * {self.resample_hz:g}"
                )
        if self.min_window_s > self.window_s:
            raise PreprocessError(f"min_window_s ({self.min_window_s:g}) must not exceed window_s ({self.window_s:g})")
        if self.bandpass_hz is not None and 3 * self.filter_taps_factor >= self.min_window_s:
            # filtfilt pads by three filter lengths; the shortest accepted record must hold that.
            raise PreprocessError(
                f"filter_taps_factor {self.filter_taps_factor:g} s is too long "
                f"for min_window_s {self.min_window_s:g} s "
                "(need 3 * filter_taps_factor < min_window_s)"
            )

    # -- derived sizes -------------------------------------------------------------------------
    @property
    def window_samples(self) -> int:
        """T, samples per lead in one model window at ``target_hz`` (500 for the released models)."""
        return int(round(self.window_s * self.target_hz))

    @property
    def min_window_samples(self) -> int:
        """Shortest accepted record at ``target_hz``, in samples per lead."""
        return int(math.ceil(self.min_window_s * self.target_hz - 1e-9))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Unknown keys and invalid values raise :class:`PreprocessError`; missing keys take their
        defaults, so that fields added later (whose defaults keep the old behaviour) still load.
        """
        if not isinstance(d, dict):
            raise PreprocessError(f"preprocessing spec must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PreprocessError(f"unknown preprocessing key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = dict(d)
        if isinstance(kwargs.get("bandpass_hz"), list):
            kwargs["bandpass_hz"] = tuple(kwargs["bandpass_hz"])
        return cls(**kwargs)

    @classmethod
    def reference(cls) -> PreprocessSpec:
        """The published pipeline: band-pass, resample to 500 Hz, min-max, decimate flattened 5 s blocks.

        The first window of :func:`preprocess_signal` output then equals the published model input
        (first 5 s). Non-finite samples are still cleaned first: the published code filtered them
        into whole leads of NaN, so there is nothing meaningful to reproduce there.
        """
        return cls(decimation="flattened")


def _as_float(name: str, value: Any) -> float:
    # bool is an int subclass; True as a frequency is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PreprocessError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise PreprocessError(f"{name} must be finite, got {value!r}")
    return out


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise PreprocessError(f"{name} must be one of {list(choices)}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Signal processing
# ---------------------------------------------------------------------------------------------


def fir_numtaps(fs: float, factor: float = 0.3) -> int:
    """Tap count of the published band-pass: ``int(factor * fs)``, plus one when even (151 at 500 Hz)."""
    numtaps = int(factor * fs)
    if numtaps % 2 == 0:
        numtaps += 1
    return numtaps


def bandpass_taps(fs: float, spec: PreprocessSpec) -> np.ndarray | None:
    """FIR taps ``(numtaps,)`` of the band-pass at rate ``fs``, or ``None`` when nothing is filtered.

    Same design as the published offline step: Hamming ``firwin`` on edges normalised as
    ``2 f / fs``, ``pass_zero=False``. When the high edge is at or above Nyquist only the low edge
    is kept (high-pass), and with ``low = 0`` only the high edge (low-pass).
    """
    from scipy.signal import firwin

    if spec.bandpass_hz is None:
        return None
    low, high = spec.bandpass_hz
    numtaps = fir_numtaps(fs, spec.filter_taps_factor)
    if numtaps < 3:
        raise PreprocessError(f"sampling rate {fs:g} Hz gives only {numtaps} FIR taps; need >= 3")
    nyquist = fs / 2.0
    has_low = low > 0
    has_high = high < nyquist
    if has_low and has_high:
        return firwin(numtaps, 2.0 * np.array([low, high]) / fs, pass_zero=False)
    if has_low:
        return firwin(numtaps, 2.0 * low / fs, pass_zero=False)
    if has_high:
        return firwin(numtaps, 2.0 * high / fs, pass_zero=True)
    return None


def fir_filtfilt(taps: np.ndarray, x: np.ndarray, *, max_block_samples: int = 1 << 20) -> np.ndarray:
    """``scipy.signal.filtfilt(taps, [1.0], x, axis=-1)`` for an FIR filter, in O(n) memory and O(n log n) time.

    Same result as SciPy's (odd extension of ``3 * len(taps)`` samples, initial state ``lfilter_zi`` times
    the first sample, forward then backward) to rounding: for an FIR filter, that initial state is
    exactly what an input held at the first sample forever leaves behind, so each pass is a plain
    convolution of the input preceded by ``len(taps) - 1`` copies of its first sample (done by FFT).
    Why not SciPy's: ``lfilter_zi`` solves a dense ``(taps - 1)^2`` system (7 GB at 100 kHz, where
    the published design has 30001 taps), and direct filtering costs ``n * taps`` per pass. Leads
    are filtered a block at a time so that scratch memory stays near ``max_block_samples`` samples.
    """
    from scipy.signal import oaconvolve

    taps = np.asarray(taps, dtype=np.float64)
    m = len(taps)
    padlen = 3 * m
    n = x.shape[-1]
    if n <= padlen:
        raise PreprocessError(f"record of {n} samples is too short for a {m}-tap filter (needs > {padlen})")
    flat = x.reshape(-1, n)
    out = np.empty_like(flat, dtype=np.float64)
    rows = max(1, max_block_samples // (n + 2 * padlen + m))

    def one_pass(v: np.ndarray) -> np.ndarray:
        held = np.concatenate([np.repeat(v[:, :1], m - 1, axis=1), v], axis=1)
        return oaconvolve(held, taps[None, :], mode="valid", axes=1)

    for start in range(0, flat.shape[0], rows):
        v = flat[start : start + rows]
        ext = np.concatenate(
            [2 * v[:, :1] - v[:, padlen:0:-1], v, 2 * v[:, -1:] - v[:, -2 : -(padlen + 2) : -1]], axis=1
        )
        y = one_pass(ext)
        y = one_pass(y[:, ::-1])[:, ::-1]
        out[start : start + rows] = y[:, padlen : padlen + n]
    return out.reshape(x.shape)


def missing_leads(signals: np.ndarray) -> np.ndarray:
    """Bool ``(..., 12)``: True for a lead without any finite sample. Input ``(..., 12, n)``."""
    return ~np.isfinite(np.asarray(signals)).any(axis=-1)


def _clean_nonfinite(x: np.ndarray, policy: str, names: Sequence[str] = LEAD_NAMES) -> np.ndarray:
    """Replace non-finite samples of ``x`` ``(B, L, n)`` float64 (leads ``names``) in place per ``policy``."""
    finite = np.isfinite(x)
    if finite.all():
        return x
    if policy == "raise":
        b, lead = np.argwhere(~finite.all(axis=-1))[0]
        count = int((~finite[b, lead]).sum())
        where = f"record {b}, " if x.shape[0] > 1 else ""
        raise PreprocessError(f"{where}lead {names[lead]} has {count} non-finite sample(s) and nan_policy is 'raise'")
    if policy == "zero":
        fill = np.zeros(x.shape[:-1])
    else:
        # Average deviations from the lead's first finite value: a flat lead then gets exactly its
        # own value back, not one off by an ulp that min-max would later stretch to full scale.
        first = np.take_along_axis(x, finite.argmax(axis=-1)[..., None], axis=-1)
        first = np.where(np.isfinite(first), first, 0.0)
        counts = finite.sum(axis=-1)
        deviations = np.where(finite, x - first, 0.0).sum(axis=-1)
        fill = first[..., 0] + deviations / np.maximum(counts, 1)  # all-missing lead: 0
    x[~finite] = np.broadcast_to(fill[..., None], x.shape)[~finite]
    empty = ~finite.any(axis=-1)
    if empty.any():
        parts = []
        for b, lead in np.argwhere(empty):
            parts.append(f"{'record ' + str(b) + ' ' if x.shape[0] > 1 else ''}lead {names[lead]}")
        warnings.warn(f"no finite samples, replaced by zeros: {', '.join(parts)}", MissingLeadWarning, stacklevel=4)
    return x


def _scale(x: np.ndarray, scaling: str) -> np.ndarray:
    """Per-lead scaling over the last axis of ``x`` ``(..., n)``."""
    if scaling == "minmax":
        lo = x.min(axis=-1, keepdims=True)
        hi = x.max(axis=-1, keepdims=True)
        return 2.0 * (x - lo) / (hi - lo + _SCALE_EPS) - 1.0
    if scaling == "zscore":
        return (x - x.mean(axis=-1, keepdims=True)) / (x.std(axis=-1, keepdims=True) + _SCALE_EPS)
    return x


def _decimate_flattened(x: np.ndarray, q: int, block: int) -> np.ndarray:
    """Published decimation: each ``block``-sample window of ``x`` ``(B, 12, n)`` is flattened
    (leads end to end), decimated by ``q`` and reshaped back; windows are concatenated in time.

    A trailing partial block is treated the same way after dropping its last ``len % q`` samples
    (under ``q`` samples, i.e. < 10 ms at 500 Hz), so that it reshapes back to whole leads.
    """
    from scipy.signal import decimate

    batch, leads, n = x.shape
    n_full = n // block
    parts = []
    if n_full:
        blocks = x[..., : n_full * block].reshape(batch, leads, n_full, block).transpose(0, 2, 1, 3)
        flat = blocks.reshape(batch, n_full, leads * block)
        dec = decimate(flat, q, axis=-1).reshape(batch, n_full, leads, block // q)
        parts.append(dec.transpose(0, 2, 1, 3).reshape(batch, leads, n_full * (block // q)))
    tail = ((n - n_full * block) // q) * q
    if tail:
        flat = x[..., n_full * block : n_full * block + tail].reshape(batch, leads * tail)
        parts.append(decimate(flat, q, axis=-1).reshape(batch, leads, tail // q))
    return np.concatenate(parts, axis=-1)


def preprocess_batch(signals: np.ndarray, fs: float, spec: PreprocessSpec) -> np.ndarray:
    """Preprocess a batch of records sharing one rate, vectorised along the last axis.

    Args:
        signals: ``(B, 12, n)`` raw records at ``fs`` Hz, leads I, II, III, aVR, aVL, aVF, V1-V6.
        fs: sampling rate of ``signals`` in Hz.
        spec: the preprocessing to apply.

    Returns:
        float32 ``(B, 12, m)`` at ``spec.target_hz``; ``m = ceil(n_res / q)`` for per-lead
        decimation and ``floor(n_res / q)`` for flattened, with ``n_res = int(n * resample_hz / fs)``
        and ``q = resample_hz / target_hz``.

    Raises:
        PreprocessError: wrong shape, bad rate, record shorter than ``spec.min_window_s``, or a
            non-finite sample under ``nan_policy="raise"``.
    """
    x = np.asarray(signals)
    if x.ndim != 3 or x.shape[1] != N_LEADS:
        hint = " (leads must be rows; transposed?)" if x.ndim == 3 and x.shape[2] == N_LEADS else ""
        raise PreprocessError(f"expected signals of shape (batch, 12, samples), got {tuple(x.shape)}{hint}")
    fs = _as_float("fs", fs)
    if fs <= 0:
        raise PreprocessError(f"fs must be > 0, got {fs:g}")
    n = x.shape[-1]
    if n < spec.min_window_s * fs - 1e-9:
        raise PreprocessError(
            f"record is {n} samples ({n / fs:.3f} s at {fs:g} Hz) long; the minimum is {spec.min_window_s:g} s"
        )
    if spec.decimation != "flattened" and x.size > _LEADWISE_ABOVE_SAMPLES:
        # Long or high-rate records (an hour at 500 Hz, seconds at 100 kHz): every step acts on each
        # lead alone, so one lead at a time gives the same result with a twelfth of the scratch memory.
        return np.concatenate(
            [
                _chain(np.array(x[:, i : i + 1], dtype=np.float64), fs, spec, LEAD_NAMES[i : i + 1])
                for i in range(N_LEADS)
            ],
            axis=1,
        )
    return _chain(np.array(x, dtype=np.float64), fs, spec, LEAD_NAMES)  # a copy: the NaN clean-up writes in place


#: Above this many samples in a batch, :func:`preprocess_batch` processes one lead at a time.
_LEADWISE_ABOVE_SAMPLES = 1 << 23


def _chain(x: np.ndarray, fs: float, spec: PreprocessSpec, names: Sequence[str]) -> np.ndarray:
    """Steps 1-6 on float64 ``(B, L, n)`` (modified in place), leads named ``names``; float32 out."""
    absent = missing_leads(x)  # (B, L): leads with no finite sample (not recorded)
    x = _clean_nonfinite(x, spec.nan_policy, names)

    if spec.scaling != "none":
        # Filters and resampler are linear and map constants to constants, and both scalers are
        # shift-invariant, so removing each lead's mean changes nothing but rounding -- except that
        # a large DC offset (raw ADC counts) no longer leaves rounding noise for min-max to stretch.
        x -= x.mean(axis=-1, keepdims=True)

    x = _filter(x, fs, spec)
    x, rate = _resample(x, fs, spec)
    x = _scale(x, spec.scaling)
    x = _decimate_to_target(x, rate, spec)

    out = x.astype(np.float32)
    # A lead that was never recorded is 0 in the model input, the middle of the [-1, 1] range (the
    # published min-max formula would map its zero fill to -1, as for a flat recorded lead).
    out[absent] = 0.0
    if not np.isfinite(out).all():
        raise PreprocessError("preprocessing produced non-finite values; input amplitudes exceed float range")
    return out


def _filter(x: np.ndarray, fs: float, spec: PreprocessSpec) -> np.ndarray:
    """The baseline high-pass (when set) and the band-pass FIR, both zero-phase."""
    from scipy.signal import butter, sosfiltfilt

    n = x.shape[-1]
    if spec.baseline_highpass_hz is not None:
        if spec.baseline_highpass_hz >= fs / 2:
            raise PreprocessError(
                f"baseline_highpass_hz {spec.baseline_highpass_hz:g} must be below fs / 2 = {fs / 2:g}"
            )
        sos = butter(_BASELINE_ORDER, spec.baseline_highpass_hz, btype="highpass", fs=fs, output="sos")
        # The default padding (9 samples) leaves seconds-long edge transients at a 0.5 Hz cut-off;
        # an odd extension of one cut-off period continues the slow trend and keeps them small.
        padlen = min(n - 1, int(round(fs / spec.baseline_highpass_hz)))
        x = sosfiltfilt(sos, x, axis=-1, padlen=padlen)

    taps = bandpass_taps(fs, spec)
    if taps is not None:
        x = fir_filtfilt(taps, x)
    return x


def _resample(x: np.ndarray, fs: float, spec: PreprocessSpec) -> tuple[np.ndarray, float]:
    """``x`` at ``spec.resample_hz`` (when set) and its rate."""
    from scipy.signal import resample

    if spec.resample_hz is None:
        return x, fs
    n = x.shape[-1]
    n_res = int(n * spec.resample_hz / fs)
    # Resampling to the same length is the identity up to rounding; skipping it saves a third
    # of the time for the common 500 Hz case.
    if n_res != n:
        x = resample(x, n_res, axis=-1)
    return x, spec.resample_hz


def _decimate_to_target(x: np.ndarray, rate: float, spec: PreprocessSpec) -> np.ndarray:
    """``x`` decimated from ``rate`` to ``spec.target_hz`` by an integer factor (flattened or per lead)."""
    from scipy.signal import decimate

    ratio = rate / spec.target_hz
    if ratio < 1 - 1e-9 or not _is_integral(ratio):
        raise PreprocessError(
            f"cannot decimate {rate:g} Hz to target_hz {spec.target_hz:g} by an integer factor; set resample_hz"
        )
    q = int(round(ratio))
    if q > 1:
        if spec.decimation == "flattened":
            block = spec.window_s * rate
            if not _is_integral(block):
                raise PreprocessError(f"window_s {spec.window_s:g} s is not a whole number of samples at {rate:g} Hz")
            x = _decimate_flattened(x, q, int(round(block)))
        else:
            x = decimate(x, q, axis=-1)
    return x


def preprocess_signal(signal: np.ndarray, fs: float, spec: PreprocessSpec) -> np.ndarray:
    """Preprocess one whole record: ``(12, n)`` at ``fs`` -> float32 ``(12, m)`` at ``spec.target_hz``.

    See :func:`preprocess_batch` for the steps, output length and errors. With
    ``decimation="flattened"`` the record is cut into consecutive ``window_s`` blocks at
    ``resample_hz``, each decimated as one flattened vector, so ``out[:, :T]`` (T =
    ``spec.window_samples``) is exactly the published model input for the first 5 s.
    """
    x = np.asarray(signal)
    if x.ndim != 2 or x.shape[0] != N_LEADS:
        hint = " (leads must be rows; transposed?)" if x.ndim == 2 and x.shape[1] == N_LEADS else ""
        raise PreprocessError(f"expected a signal of shape (12, samples), got {tuple(x.shape)}{hint}")
    return preprocess_batch(x[None], fs, spec)[0]


# ---------------------------------------------------------------------------------------------
# Windowing
# ---------------------------------------------------------------------------------------------

ArrayT = TypeVar("ArrayT")


def flatten_window(x: ArrayT) -> ArrayT:
    """Leads end to end: ``(..., 12, T)`` -> ``(..., 12 * T)``; numpy arrays and torch tensors."""
    shape = tuple(x.shape)  # type: ignore[attr-defined]
    if len(shape) < 2:
        raise PreprocessError(f"expected (..., leads, samples), got shape {shape}")
    return x.reshape(*shape[:-2], shape[-2] * shape[-1])  # type: ignore[attr-defined]


def unflatten_window(x: ArrayT, n_leads: int = N_LEADS) -> ArrayT:
    """Inverse of :func:`flatten_window`: ``(..., n_leads * T)`` -> ``(..., n_leads, T)``."""
    shape = tuple(x.shape)  # type: ignore[attr-defined]
    if not shape or shape[-1] % n_leads:
        raise PreprocessError(f"last axis of shape {shape} is not a multiple of {n_leads} leads")
    return x.reshape(*shape[:-1], n_leads, shape[-1] // n_leads)  # type: ignore[attr-defined]


def window_starts(
    n: int,
    window: int,
    *,
    mode: str = "first",
    stride: int | None = None,
    n_crops: int = 1,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Start indices ``(W,)`` int64 of windows of ``window`` samples in a record of ``n`` samples.

    Modes:
        ``"first"``: ``[0]``.
        ``"random"``: ``n_crops`` starts drawn uniformly from ``[0, n - window]`` with ``rng``.
        ``"sliding"``: every ``stride`` samples (default ``window``), plus a last window flush
            with the end when the grid misses the tail, so every sample is covered.
        ``"all_non_overlapping"``: ``0, window, 2 * window, ...`` while a full window fits; the
            tail that does not fill a window is dropped.

    A record shorter than the window gets the single start 0 (``n_crops`` zeros for ``"random"``,
    so batches keep a fixed number of crops); :func:`cut_windows` then pads it.
    """
    for name, value in (("n", n), ("window", window), ("n_crops", n_crops)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise PreprocessError(f"{name} must be a positive integer, got {value!r}")
    _check_choice("mode", mode, _WINDOW_MODES)
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1):
        raise PreprocessError(f"stride must be a positive integer, got {stride!r}")
    last = n - window
    if mode == "random":
        if last <= 0:
            return np.zeros(n_crops, dtype=np.int64)
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return generator.integers(0, last + 1, size=n_crops, dtype=np.int64)
    if last <= 0 or mode == "first":
        return np.zeros(1, dtype=np.int64)
    if mode == "all_non_overlapping":
        return np.arange(0, last + 1, window, dtype=np.int64)
    step = window if stride is None else int(stride)
    starts = np.arange(0, last + 1, step, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def cut_windows(
    signal100: np.ndarray, spec: PreprocessSpec, starts: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cut flattened model windows and sample-level attention masks from a preprocessed record.

    Args:
        signal100: ``(12, m)`` record at ``spec.target_hz`` (output of :func:`preprocess_signal`).
        spec: gives the window length T = ``spec.window_samples`` and the minimum length.
        starts: ``(W,)`` window starts in samples, each in ``[0, max(m - T, 0)]``
            (see :func:`window_starts`).

    Returns:
        ``windows`` float32 ``(W, 12 * T)``, leads end to end, and ``mask`` bool ``(W, 12 * T)``,
        True on real samples. A record shorter than T is zero-padded at the end of each lead, so
        in the flattened vector the padding sits inside (after every lead), with mask False there.

    Raises:
        PreprocessError: wrong shape, record shorter than ``spec.min_window_s``, or a start out of range.
    """
    x = np.asarray(signal100)
    if x.ndim != 2 or x.shape[0] != N_LEADS:
        raise PreprocessError(f"expected a preprocessed signal of shape (12, samples), got {tuple(x.shape)}")
    m = x.shape[1]
    window = spec.window_samples
    if m < spec.min_window_samples:
        raise PreprocessError(
            f"record is {m} samples ({m / spec.target_hz:.2f} s at {spec.target_hz:g} Hz) long; "
            f"the minimum is {spec.min_window_s:g} s ({spec.min_window_samples} samples)"
        )
    start_arr = np.asarray(starts)
    if start_arr.ndim != 1 or (start_arr.size and not np.issubdtype(start_arr.dtype, np.integer)):
        raise PreprocessError(f"starts must be a 1-D sequence of integers, got {starts!r}")
    start_arr = start_arr.astype(np.int64)
    last = max(m - window, 0)
    bad = (start_arr < 0) | (start_arr > last)
    if bad.any():
        raise PreprocessError(
            f"window start {int(start_arr[bad][0])} out of range [0, {last}] for a record of {m} samples"
        )

    index = start_arr[:, None] + np.arange(window)[None, :]  # (W, T)
    valid = index < m  # (W, T): False only on the padding of a short record
    gathered = x[:, np.minimum(index, m - 1)]  # (12, W, T)
    gathered = np.where(valid[None], gathered, 0.0).astype(np.float32)
    windows = flatten_window(gathered.transpose(1, 0, 2))  # (W, 12 * T)
    mask = flatten_window(np.broadcast_to(valid[:, None, :], (len(start_arr), N_LEADS, window))).copy()
    return windows, mask


# --------------------------------------------------------------------------------------------
# Reduced-lead input: named lead sets, zeroing leads in flattened windows, lead dropout
# --------------------------------------------------------------------------------------------

#: Named lead subsets for reduced-lead evaluation (``evaluate --leads``). A missing lead reaches the
#: model as zeros (what preprocessing makes of a lead without samples), so a subset is simulated by
#: zeroing the other leads of the flattened 12-lead input.
LEAD_SETS: dict[str, tuple[str, ...]] = {
    "all": LEAD_NAMES,
    "limb": LEAD_NAMES[:6],
    "precordial": LEAD_NAMES[6:],
    "I": ("I",),
    "II": ("II",),
    "I,II": ("I", "II"),
}


def parse_lead_set(text: str) -> tuple[str, ...]:
    """A named set (``limb``, ``precordial``, ``all``, ``I``, ``II``) or comma-separated lead names -> names.

    Raises ValueError naming the unknown lead; names are matched case-insensitively (``avr`` = ``aVR``).
    """
    text = text.strip()
    if text in LEAD_SETS:
        return LEAD_SETS[text]
    by_lower = {name.lower(): name for name in LEAD_NAMES}
    names = []
    for part in (p.strip() for p in text.split(",")):
        if part.lower() not in by_lower:
            raise ValueError(
                f"unknown lead {part!r} in lead set {text!r} (leads: {', '.join(LEAD_NAMES)}; "
                f"named sets: {', '.join(LEAD_SETS)})"
            )
        names.append(by_lower[part.lower()])
    if len(set(names)) != len(names):
        raise ValueError(f"lead set {text!r} names a lead twice")
    return tuple(sorted(names, key=LEAD_NAMES.index))


def lead_keep_mask(leads: Sequence[str]) -> np.ndarray:
    """(12,) bool, True for the leads in ``leads``."""
    return np.isin(np.asarray(LEAD_NAMES), list(leads))


def zero_leads(x: ArrayT, keep: Any) -> ArrayT:
    """Copy of flattened windows ``x`` (B, 12 * T) (numpy or torch) with the leads not in ``keep`` zeroed.

    ``keep``: (12,) or (B, 12) bool (numpy or torch).
    """
    shape = tuple(x.shape)  # type: ignore[attr-defined]
    batch = shape[0]
    keep_np = np.asarray(keep.cpu() if hasattr(keep, "cpu") else keep, dtype=bool)
    if keep_np.shape not in ((N_LEADS,), (batch, N_LEADS)):
        raise PreprocessError(f"lead mask of shape {keep_np.shape} does not fit {batch} windows of {N_LEADS} leads")
    keep_np = np.broadcast_to(keep_np, (batch, N_LEADS))
    grid = x.reshape(batch, N_LEADS, -1)  # type: ignore[attr-defined]
    if isinstance(x, np.ndarray):
        return (grid * keep_np[:, :, None]).reshape(shape)
    mask = x.new_tensor(keep_np.astype(np.float32))  # type: ignore[attr-defined]
    return (grid * mask[:, :, None]).reshape(shape)


def lead_dropout_mask(batch: int, p: float, rng: np.random.Generator, present: np.ndarray | None = None) -> np.ndarray:
    """(batch, 12) bool keep-mask for lead dropout: each lead is dropped with probability ``p``.

    At least one lead is always kept per sample: if all were dropped, one of them (uniformly among the
    ``present`` leads, default all 12) is put back, so the model never sees an all-zero input.
    """
    if not 0.0 <= p < 1.0:
        raise PreprocessError(f"lead dropout probability must be in [0, 1), got {p}")
    avail = np.ones((batch, N_LEADS), dtype=bool) if present is None else np.asarray(present, dtype=bool)
    keep = (rng.random((batch, N_LEADS)) >= p) & avail
    empty = ~keep.any(axis=1)
    for b in np.flatnonzero(empty):
        choices = np.flatnonzero(avail[b]) if avail[b].any() else np.arange(N_LEADS)
        keep[b, rng.choice(choices)] = True
    return keep


def apply_lead_dropout(x: ArrayT, p: float, rng: np.random.Generator) -> ArrayT:
    """Lead dropout on flattened windows ``x`` (B, 12 * T), numpy or torch: zero each lead with probability ``p``.

    Leads that are already all zero (missing in the record) count as absent: the lead kept back by
    :func:`lead_dropout_mask` is one that has signal, so no sample becomes an all-zero input.
    """
    if p <= 0:
        return x
    batch = int(x.shape[0])  # type: ignore[attr-defined]
    grid = x.reshape(batch, N_LEADS, -1)  # type: ignore[attr-defined]
    present = grid.abs().amax(-1) > 0 if not isinstance(x, np.ndarray) else np.abs(grid).max(-1) > 0
    present_np = np.asarray(present.cpu() if hasattr(present, "cpu") else present, dtype=bool)
    return zero_leads(x, lead_dropout_mask(batch, p, rng, present_np))
