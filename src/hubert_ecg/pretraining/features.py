"""Iteration-1 hand-crafted descriptors, one vector per model token.

The first HuBERT iteration has no model to take latents from, so its k-means targets are computed from
the signal itself: 16 time-frequency statistics, Kaldi-style MFCCs, or both (16 + 13 = 29).

Alignment with the tokens
-------------------------
The model input is a flattened 12-lead window ``(B, L)``: at 100 Hz, 12 leads x 500 samples laid end to
end (``L = 6000``). The convolutional stem (kernels ``(10, 3, 3, 2, 2)``, strides ``(4, 2, 2, 2, 2)``) has
a total stride of 64 samples and a receptive field of 82 samples, so it emits 93 tokens and token ``t``
sees exactly the input samples ``[64 t, 64 t + 82)``. Here descriptor ``t`` is computed on exactly that
span (:func:`token_spans`), for any conv layout: 500 Hz (stride 320, field 400, 30000 -> 93 tokens) and
50 Hz (stride 32, field 50, 3000 -> 93 tokens) included. Neighbouring spans overlap by
``field - stride`` samples, like the receptive fields they describe, and 14 of the 93 spans at 100 Hz
cross one of the 11 lead junctions, as the tokens do (tokens are not aligned to leads).

The reference implementation instead trimmed 2 samples at each end of every lead and cut the
concatenation into 93 disjoint 64-sample shards. The trimmed samples accumulate along the flattened
vector, so its shard ``t`` lies later than token ``t`` by ``2 + 4 * lead`` samples: up to 46 samples
(0.46 s) for V6 at 100 Hz, i.e. the target of a late token described mostly what the next token sees.

Descriptors
-----------
* ``"tf"`` (16 values per token, :func:`time_frequency_features`): min, max, mean, RMS, variance, std,
  power (mean x^2), peak |x|, peak-to-peak, crest factor (peak / RMS), skewness, excess kurtosis, and on
  ``S = |FFT(x)|^2 / n`` (full two-sided spectrum of the span): max, sum, mean, variance.
* ``"mfcc"`` (13 values, or 39 with deltas, :func:`mfcc_features`): Kaldi MFCC with the token span as a
  single frame. Deltas are taken *across neighbouring tokens*; the reference took them within a one-frame
  shard, which made its 26 delta values identically zero.
* ``"tf+mfcc"`` (29 values): both, as in the reference's default "mixed" descriptor.

Speed
-----
Everything is vectorised over batch and tokens through a strided view (no Python loop over tokens), in
blocks of whole ECGs so that float64 temporaries stay cache-sized. Measured with numpy on this project's
2-core CPU, ``hand_features(x, "tf+mfcc")`` on a ``(256, 6000)`` 100 Hz batch takes 0.077 s on an idle
machine, about 3,300 ECG/s ("tf" alone ~6,000 ECG/s, "mfcc" alone ~7,400 ECG/s; about half that with
other jobs sharing the cores). At 500 Hz, ``(256, 30000)``, "tf+mfcc" ran at ~440 ECG/s under that load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ..config import CONV_STEMS, stem_layout
from ..config import token_spans as _stem_token_spans

__all__ = [
    "DEFAULT_CONV_LAYOUTS",
    "FeatureInputError",
    "HandFeatureKind",
    "TF_FEATURE_NAMES",
    "conv_layout",
    "hand_features",
    "hand_feature_dim",
    "mfcc_features",
    "token_spans",
    "time_frequency_features",
]

HandFeatureKind = Literal["tf", "mfcc", "tf+mfcc"]

# Conv front ends of the released models, keyed by input sampling rate: a view of config.CONV_STEMS.
DEFAULT_CONV_LAYOUTS: dict[float, tuple[tuple[int, ...], tuple[int, ...]]] = {
    float(rate): (tuple(stem["conv_kernel"]), tuple(stem["conv_stride"])) for rate, stem in CONV_STEMS.items()
}

TF_FEATURE_NAMES: tuple[str, ...] = (
    "min",
    "max",
    "mean",
    "rms",
    "variance",
    "std",
    "power",
    "peak",
    "peak_to_peak",
    "crest_factor",
    "skewness",
    "excess_kurtosis",
    "spectrum_max",
    "spectrum_sum",
    "spectrum_mean",
    "spectrum_variance",
)

# Same threshold as scipy.stats.skew/kurtosis use to call a sample constant: below it the central moments
# are rounding noise and their ratio is meaningless.
_FLAT_RESOLUTION = np.finfo(np.float64).resolution

# Samples per block of ECGs processed at once (~8 MB of float64 per temporary): large batches of long
# windows otherwise spend most of their time streaming temporaries through main memory.
_BLOCK_ELEMENTS = 1 << 20


class FeatureInputError(ValueError):
    """Bad input to a descriptor function (wrong shape, too short, non-finite samples, unknown kind)."""


def conv_layout(
    fs: float,
    conv_kernels: Sequence[int] | None = None,
    conv_strides: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Conv kernels and strides to use: the explicit ones if given, else the released layout for ``fs``."""
    if (conv_kernels is None) != (conv_strides is None):
        raise FeatureInputError("conv_kernels and conv_strides must be given together")
    if conv_kernels is not None and conv_strides is not None:
        kernels, strides = tuple(int(k) for k in conv_kernels), tuple(int(s) for s in conv_strides)
        if len(kernels) != len(strides) or not kernels:
            raise FeatureInputError(
                f"conv_kernels {kernels} and conv_strides {strides} must be non-empty and of equal length"
            )
        if min(kernels) < 1 or min(strides) < 1:
            raise FeatureInputError(f"conv kernels {kernels} and strides {strides} must be positive")
        return kernels, strides
    try:
        return stem_layout(fs)
    except ValueError as err:
        raise FeatureInputError(str(err)) from None


def token_spans(
    n_samples: int,
    conv_kernels: Sequence[int] = (10, 3, 3, 2, 2),
    conv_strides: Sequence[int] = (4, 2, 2, 2, 2),
) -> np.ndarray:
    """Receptive field of every token emitted by a stack of valid (unpadded) 1-D convolutions.

    Args:
        n_samples: length ``L`` of the flattened input.
        conv_kernels, conv_strides: per-layer kernel sizes and strides (defaults: the 100 Hz stem).

    Returns:
        int64 array ``(T, 2)``: ``[start, stop)`` of the input samples token ``t`` depends on, i.e.
        ``[t * S, t * S + R)`` with total stride ``S = prod(strides)`` and receptive field
        ``R = 1 + sum_i (k_i - 1) * prod_{j<i} s_j``. ``T`` follows the conv length rule
        ``floor((L - k) / s) + 1`` layer by layer (6000 -> 93 at 100 Hz).
    """
    kernels, strides = conv_layout(0.0, conv_kernels, conv_strides)
    try:
        return _stem_token_spans(n_samples, kernels, strides)  # the geometry lives in hubert_ecg.config
    except ValueError as err:
        raise FeatureInputError(str(err)) from None


def _as_signal_batch(x: object, name: str = "x") -> np.ndarray:
    """Validate ``(B, L)`` input and return it as a float64 array (torch tensors are accepted)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if array.ndim != 2:
        raise FeatureInputError(f"{name}: expected shape (batch, samples), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise FeatureInputError(f"{name}: expected real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise FeatureInputError(
            f"{name}: row {bad_rows[0]} has {int((~finite[bad_rows[0]]).sum())} non-finite samples "
            f"({len(bad_rows)} bad rows in total); impute or drop them before computing descriptors"
        )
    return array


def _token_windows(x: np.ndarray, conv_kernels: Sequence[int], conv_strides: Sequence[int]) -> np.ndarray:
    """Read-only strided view ``(B, T, R)`` of every token's receptive field (no copy)."""
    spans = token_spans(x.shape[1], conv_kernels, conv_strides)
    n_tokens, field = spans.shape[0], int(spans[0, 1] - spans[0, 0])
    stride = int(spans[1, 0] - spans[0, 0]) if n_tokens > 1 else 1
    windows = np.lib.stride_tricks.sliding_window_view(x, field, axis=1)
    return windows[:, ::stride][:, :n_tokens]


def time_frequency_features(
    x: object,
    *,
    fs: float = 100.0,
    conv_kernels: Sequence[int] | None = None,
    conv_strides: Sequence[int] | None = None,
) -> np.ndarray:
    """The reference's 16 time-frequency statistics on each token's receptive field.

    Args:
        x: ``(B, L)`` flattened ECGs (numpy array or CPU/GPU torch tensor), finite values.
        fs: sampling rate; only selects the default conv layout (500, 100 or 50 Hz).
        conv_kernels, conv_strides: explicit conv layout overriding the one implied by ``fs``.

    Returns:
        float32 ``(B, T, 16)`` in the order of :data:`TF_FEATURE_NAMES`. Skewness and kurtosis are the
        biased estimators of ``scipy.stats.skew`` / ``scipy.stats.kurtosis`` (Fisher, excess). On a flat
        span (zero variance up to rounding) skewness and kurtosis are 0, and the crest factor is 0 when the
        span is all zeros (RMS = 0); nothing is ever NaN or infinite for finite input.
    """
    signal = _as_signal_batch(x)
    kernels, strides = conv_layout(fs, conv_kernels, conv_strides)
    return _blockwise(_tf_of_windows, _token_windows(signal, kernels, strides))


def _blockwise(
    compute: Callable[[np.ndarray], np.ndarray], windows: np.ndarray, dtype: type = np.float32
) -> np.ndarray:
    """Apply ``compute`` to blocks of whole ECGs so that its float64 temporaries stay cache-sized."""
    per_ecg = max(1, windows.shape[1] * windows.shape[2])
    block = max(1, _BLOCK_ELEMENTS // per_ecg)
    parts = [compute(windows[start : start + block]) for start in range(0, windows.shape[0], block)]
    return np.concatenate(parts).astype(dtype, copy=False)


def _tf_of_windows(w: np.ndarray) -> np.ndarray:
    """The 16 statistics of every window of ``w`` ``(b, T, R)`` -> float64 ``(b, T, 16)``."""
    n = w.shape[-1]
    w_min = w.min(axis=-1)
    w_max = w.max(axis=-1)
    mean = w.mean(axis=-1)
    power = np.einsum("btr,btr->bt", w, w) / n
    centred = w - mean[..., None]
    c2 = centred * centred
    m2 = c2.mean(axis=-1)
    m3 = np.einsum("btr,btr->bt", c2, centred) / n
    m4 = np.einsum("btr,btr->bt", c2, c2) / n
    rms = np.sqrt(power)
    peak = np.maximum(np.abs(w_min), np.abs(w_max))

    flat = m2 <= (_FLAT_RESOLUTION * mean) ** 2
    flat |= m2 == 0.0
    safe_m2 = np.where(flat, 1.0, m2)
    skewness = np.where(flat, 0.0, m3 / safe_m2**1.5)
    kurtosis = np.where(flat, 0.0, m4 / safe_m2**2 - 3.0)
    crest = np.where(rms > 0.0, peak / np.where(rms > 0.0, rms, 1.0), 0.0)

    # Two-sided |FFT|^2 / n from the one-sided rfft: every bin but DC (and Nyquist for even n) occurs twice.
    spectrum = np.abs(np.fft.rfft(w, axis=-1)) ** 2 / n
    multiplicity = np.full(spectrum.shape[-1], 2.0)
    multiplicity[0] = 1.0
    if n % 2 == 0:
        multiplicity[-1] = 1.0
    s_sum = spectrum @ multiplicity
    s_mean = s_sum / n
    s_var = ((spectrum - s_mean[..., None]) ** 2) @ multiplicity / n

    return np.stack(
        [
            w_min,
            w_max,
            mean,
            rms,
            m2,
            np.sqrt(m2),
            power,
            peak,
            w_max - w_min,
            crest,
            skewness,
            kurtosis,
            spectrum.max(axis=-1),
            s_sum,
            s_mean,
            s_var,
        ],
        axis=-1,
    )


def _mel_scale(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def _kaldi_mel_banks(n_mels: int, padded_size: int, fs: float, low_freq: float, high_freq: float) -> np.ndarray:
    """Kaldi triangular mel filters (triangles in mel space), ``(n_mels, padded_size // 2 + 1)``."""
    nyquist = 0.5 * fs
    if high_freq <= 0.0:  # Kaldi convention: non-positive means offset from Nyquist
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise FeatureInputError(
            f"mel band [{low_freq}, {high_freq}] Hz must satisfy 0 <= low < high <= Nyquist ({nyquist} Hz)"
        )
    mel_low, mel_high = _mel_scale(low_freq), _mel_scale(high_freq)
    delta = (mel_high - mel_low) / (n_mels + 1)
    index = np.arange(n_mels, dtype=np.float64)[:, None]
    left, centre, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    # Kaldi leaves the Nyquist bin out of every filter.
    bin_mel = _mel_scale(fs / padded_size * np.arange(padded_size // 2, dtype=np.float64))[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.concatenate([banks, np.zeros((n_mels, 1))], axis=1)


def _ortho_dct_matrix(n_mels: int, n_ceps: int) -> np.ndarray:
    """Orthonormal DCT-II as a ``(n_mels, n_ceps)`` matrix, so that ``cepstra = log_mel @ matrix``."""
    mel = np.arange(n_mels, dtype=np.float64)[:, None]
    ceps = np.arange(n_ceps, dtype=np.float64)[None, :]
    matrix = np.sqrt(2.0 / n_mels) * np.cos(np.pi / n_mels * (mel + 0.5) * ceps)
    matrix[:, 0] = np.sqrt(1.0 / n_mels)
    return matrix


def _deltas_across_tokens(features: np.ndarray, half_window: int = 2) -> np.ndarray:
    """Regression deltas along axis 1 (tokens), edges replicated, as Kaldi / torchaudio ``compute_deltas``."""
    n_tokens = features.shape[1]
    padded = np.pad(features, ((0, 0), (half_window, half_window), (0, 0)), mode="edge")
    denominator = half_window * (half_window + 1) * (2 * half_window + 1) / 3.0
    deltas = np.zeros_like(features)
    for offset in range(1, half_window + 1):  # 2 iterations, not a loop over tokens
        ahead = padded[:, half_window + offset : half_window + offset + n_tokens]
        behind = padded[:, half_window - offset : half_window - offset + n_tokens]
        deltas += offset * (ahead - behind)
    return deltas / denominator


def mfcc_features(
    x: object,
    fs: float = 100.0,
    n_ceps: int = 13,
    deltas: bool = False,
    *,
    n_mels: int = 23,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    cepstral_lifter: float = 22.0,
    preemphasis: float = 0.97,
    conv_kernels: Sequence[int] | None = None,
    conv_strides: Sequence[int] | None = None,
) -> np.ndarray:
    """Kaldi-style MFCCs with each token's receptive field as one analysis frame.

    Per span: remove the DC offset, pre-emphasise (``y[i] = x[i] - 0.97 x[i-1]``, ``x[-1] := x[0]``),
    apply the Povey window (``hann ** 0.85``, symmetric), zero-pad to the next power of two, take the
    power spectrum, apply ``n_mels`` triangular mel filters from ``low_freq`` to ``high_freq`` (0 means
    Nyquist), log (floored at float32 eps), orthonormal DCT-II, keep ``n_ceps``, sinusoidal lifter. No
    dither, no energy term: the defaults of ``torchaudio.compliance.kaldi.mfcc`` with ``use_energy=False``.
    At 100 Hz the mel bank only spans 20-50 Hz; at 50 Hz (20-25 Hz, 0.8 Hz FFT bins) most filters
    are empty and their log energy is the floor.

    Args:
        x: ``(B, L)`` flattened ECGs, finite values.
        fs: sampling rate in Hz (sets the mel bank and the default conv layout).
        n_ceps: cepstra kept per token.
        deltas: append first and second regression deltas computed across neighbouring tokens
            (window 5, edges replicated), which carry information, unlike per-frame deltas of one frame.

    Returns:
        float32 ``(B, T, n_ceps)``, or ``(B, T, 3 * n_ceps)`` as ``[mfcc, delta, delta-delta]``.
    """
    signal = _as_signal_batch(x)
    if not 1 <= n_ceps <= n_mels:
        raise FeatureInputError(f"n_ceps={n_ceps} must be between 1 and n_mels={n_mels}")
    kernels, strides = conv_layout(fs, conv_kernels, conv_strides)
    windows = _token_windows(signal, kernels, strides)
    banks = _kaldi_mel_banks(n_mels, _next_power_of_two(windows.shape[-1]), fs, low_freq, high_freq)
    dct = _ortho_dct_matrix(n_mels, n_ceps)
    if cepstral_lifter > 0.0:
        lifter = 1.0 + 0.5 * cepstral_lifter * np.sin(np.pi * np.arange(n_ceps) / cepstral_lifter)
    else:  # Kaldi: a non-positive lifter means no liftering
        lifter = np.ones(n_ceps)

    def cepstra_of(w: np.ndarray) -> np.ndarray:
        return _mfcc_of_windows(w, banks, dct * lifter, preemphasis)

    cepstra = _blockwise(cepstra_of, windows, np.float64)
    if deltas:
        first = _deltas_across_tokens(cepstra)
        cepstra = np.concatenate([cepstra, first, _deltas_across_tokens(first)], axis=-1)
    return cepstra.astype(np.float32)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _mfcc_of_windows(w: np.ndarray, banks: np.ndarray, liftered_dct: np.ndarray, preemphasis: float) -> np.ndarray:
    """Kaldi MFCC of every window of ``w`` ``(b, T, R)`` -> float64 ``(b, T, n_ceps)``."""
    n = w.shape[-1]
    frames = w - w.mean(axis=-1, keepdims=True)
    emphasised = np.empty_like(frames)
    emphasised[..., 1:] = frames[..., 1:] - preemphasis * frames[..., :-1]
    emphasised[..., 0] = frames[..., 0] * (1.0 - preemphasis)
    if n > 1:
        window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))) ** 0.85
    else:
        window = np.ones(1)
    emphasised *= window

    spectrum = np.fft.rfft(emphasised, n=_next_power_of_two(n), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    log_mel = np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))
    return log_mel @ liftered_dct


def hand_feature_dim(kind: HandFeatureKind, *, n_ceps: int = 13, mfcc_deltas: bool = False) -> int:
    """Width ``F`` of :func:`hand_features` for ``kind`` (tf 16, mfcc 13 or 39, tf+mfcc 29 or 55)."""
    mfcc_width = n_ceps * (3 if mfcc_deltas else 1)
    widths = {"tf": len(TF_FEATURE_NAMES), "mfcc": mfcc_width, "tf+mfcc": len(TF_FEATURE_NAMES) + mfcc_width}
    if kind not in widths:
        raise FeatureInputError(f"unknown hand-feature kind {kind!r}; expected one of {sorted(widths)}")
    return widths[kind]


def hand_features(
    x: object,
    kind: HandFeatureKind = "tf+mfcc",
    fs: float = 100.0,
    *,
    n_ceps: int = 13,
    mfcc_deltas: bool = False,
    conv_kernels: Sequence[int] | None = None,
    conv_strides: Sequence[int] | None = None,
) -> np.ndarray:
    """Iteration-1 descriptors for every token: float32 ``(B, T, F)``.

    ``kind`` is ``"tf"`` (F = 16), ``"mfcc"`` (F = 13, or 39 with ``mfcc_deltas``) or ``"tf+mfcc"``
    (F = 16 + 13 = 29, time-frequency first), see :func:`hand_feature_dim`.
    """
    hand_feature_dim(kind, n_ceps=n_ceps, mfcc_deltas=mfcc_deltas)  # validates kind
    signal = _as_signal_batch(x)
    parts = []
    if kind in ("tf", "tf+mfcc"):
        parts.append(time_frequency_features(signal, fs=fs, conv_kernels=conv_kernels, conv_strides=conv_strides))
    if kind in ("mfcc", "tf+mfcc"):
        parts.append(
            mfcc_features(signal, fs, n_ceps, mfcc_deltas, conv_kernels=conv_kernels, conv_strides=conv_strides)
        )
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
