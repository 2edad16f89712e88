"""Iteration-1 descriptors: token alignment, parity with direct per-span computations, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.stats
import torch

from conftest import shared_path
from hubert_ecg.pretraining.features import (
    DEFAULT_CONV_LAYOUTS,
    FeatureInputError,
    conv_layout,
    hand_feature_dim,
    hand_features,
    mfcc_features,
    time_frequency_features,
    token_spans,
)

LAYOUT_CASES = [(500.0, 30000, 320, 400), (100.0, 6000, 64, 82), (50.0, 3000, 32, 50)]


def _synthetic_ecg(rng: np.random.Generator, batch: int, length: int, fs: float) -> np.ndarray:
    """Spiky quasi-periodic signal plus noise, so every statistic varies from token to token."""
    t = np.arange(length) / fs
    rate = rng.uniform(0.8, 1.6, size=(batch, 1))
    beats = np.cos(2 * np.pi * rate * t) ** 40
    wander = 0.2 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6, size=(batch, 1)))
    return beats + wander + 0.05 * rng.standard_normal((batch, length))


# ------------------------------------------------------------------ token spans
def test_token_spans_100hz_layout() -> None:
    spans = token_spans(6000)
    assert spans.shape == (93, 2)
    t = np.arange(93)
    np.testing.assert_array_equal(spans[:, 0], 64 * t)
    np.testing.assert_array_equal(spans[:, 1], 64 * t + 82)
    assert token_spans(12000).shape[0] == 187 and token_spans(3000).shape[0] == 46


@pytest.mark.parametrize(("fs", "length", "stride", "field"), LAYOUT_CASES)
def test_token_spans_match_a_real_conv_stack(fs: float, length: int, stride: int, field: int) -> None:
    """Each span is exactly the support of the token's gradient through the actual convolutions."""
    kernels, strides = DEFAULT_CONV_LAYOUTS[fs]
    spans = token_spans(length, kernels, strides)
    assert spans.shape == (93, 2)
    np.testing.assert_array_equal(spans[:, 0], stride * np.arange(93))
    np.testing.assert_array_equal(spans[:, 1] - spans[:, 0], field)

    layers = [torch.nn.Conv1d(1, 1, k, s, bias=False) for k, s in zip(kernels, strides)]
    for layer in layers:
        torch.nn.init.constant_(layer.weight, 1.0)  # positive weights: no cancellation inside the support
    signal = torch.zeros(1, 1, length, dtype=torch.float64, requires_grad=True)
    out = torch.nn.Sequential(*layers).double()(signal)
    assert out.shape[-1] == spans.shape[0]
    for token in (0, 1, 46, 92):
        (grad,) = torch.autograd.grad(out[0, 0, token], signal, retain_graph=True)
        support = np.flatnonzero(grad[0, 0].numpy())
        assert (support[0], support[-1] + 1) == tuple(spans[token])


def test_token_spans_rejects_short_input_and_unknown_rate() -> None:
    with pytest.raises(FeatureInputError, match=r"input of 40 samples is shorter than the conv receptive field"):
        token_spans(40)
    with pytest.raises(FeatureInputError, match=r"no default conv layout for fs=250\.0 Hz"):
        conv_layout(250.0)


# ------------------------------------------------------------------ time-frequency statistics
def _direct_tf(span: np.ndarray) -> np.ndarray:
    """The 16 statistics of one span, written the obvious way with numpy and scipy."""
    rms = np.sqrt(np.mean(span**2))
    spectrum = np.abs(np.fft.fft(span)) ** 2 / len(span)
    return np.array(
        [
            span.min(),
            span.max(),
            span.mean(),
            rms,
            np.var(span),
            np.std(span),
            np.mean(span**2),
            np.max(np.abs(span)),
            np.ptp(span),
            np.max(np.abs(span)) / rms,
            scipy.stats.skew(span),
            scipy.stats.kurtosis(span),
            spectrum.max(),
            spectrum.sum(),
            spectrum.mean(),
            spectrum.var(),
        ]
    )


@pytest.mark.parametrize(("fs", "length"), [(100.0, 6000), (500.0, 30000), (50.0, 3000)])
def test_time_frequency_matches_direct_per_span_computation(rng: np.random.Generator, fs: float, length: int) -> None:
    x = _synthetic_ecg(rng, 2, length, fs)
    features = time_frequency_features(x, fs=fs)
    assert features.shape == (2, 93, 16) and features.dtype == np.float32
    spans = token_spans(length, *DEFAULT_CONV_LAYOUTS[fs])
    expected = np.array([[_direct_tf(row[a:b]) for a, b in spans] for row in x])
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_time_frequency_flat_spans_are_finite_and_zero_where_undefined() -> None:
    x = np.zeros((3, 6000))
    x[1] = 0.7  # constant, non-zero
    x[2, :3000] = np.linspace(-1, 1, 3000)  # half ramp, half flat zero
    features = time_frequency_features(x)
    assert np.isfinite(features).all()
    # All-zero span: every statistic is 0 (crest factor, skewness and kurtosis by definition).
    np.testing.assert_array_equal(features[0], 0.0)
    # Constant 0.7: zero spread, peak/RMS = 1, spectrum all in the DC bin (0.7^2 * 82).
    np.testing.assert_allclose(features[1, :, [4, 5, 8, 10, 11]], 0.0, atol=1e-6)
    np.testing.assert_allclose(features[1, :, 9], 1.0, rtol=1e-6)
    np.testing.assert_allclose(features[1, :, 12], 0.49 * 82, rtol=1e-5)
    np.testing.assert_array_equal(features[2, -1], 0.0)
    assert np.abs(features[2, 0, 10]) < 1e-5  # a ramp is symmetric: skewness 0, but defined


def test_time_frequency_near_constant_span_has_no_rounding_blowup() -> None:
    x = np.full((1, 6000), 0.3)
    x[0, 10] += 1e-17  # below float64 resolution relative to the mean: treated as flat, like scipy
    features = time_frequency_features(x)
    assert np.isfinite(features).all()
    assert features[0, 0, 10] == 0.0 and features[0, 0, 11] == 0.0


def test_non_finite_input_is_rejected_with_the_row() -> None:
    x = np.zeros((4, 6000))
    x[2, 17] = np.nan
    with pytest.raises(FeatureInputError, match=r"^x: row 2 has 1 non-finite samples \(1 bad rows in total\)"):
        hand_features(x, "tf")
    with pytest.raises(FeatureInputError, match=r"^x: expected shape \(batch, samples\), got \(6000,\)$"):
        hand_features(np.zeros(6000), "tf")


# ------------------------------------------------------------------ MFCC
def _reference_mfcc_frame(frame: np.ndarray, fs: float, n_ceps: int = 13, n_mels: int = 23) -> np.ndarray:
    """Kaldi MFCC of one frame, written step by step with explicit loops (no shared code with the module)."""
    frame = frame - frame.mean()
    emphasised = np.array([frame[i] - 0.97 * frame[max(i - 1, 0)] for i in range(len(frame))])
    emphasised = emphasised * np.hanning(len(frame)) ** 0.85  # np.hanning is the symmetric Hann window
    n_fft = 1
    while n_fft < len(frame):
        n_fft *= 2
    power = np.abs(np.fft.rfft(emphasised, n_fft)) ** 2

    def mel(f: float) -> float:
        return 1127.0 * np.log(1.0 + f / 700.0)

    low, high = mel(20.0), mel(fs / 2)
    step = (high - low) / (n_mels + 1)
    energies = np.zeros(n_mels)
    for m in range(n_mels):
        left, centre, right = low + m * step, low + (m + 1) * step, low + (m + 2) * step
        for b in range(n_fft // 2):  # the Nyquist bin is in no filter
            f_mel = mel(b * fs / n_fft)
            if left < f_mel < right:
                weight = (f_mel - left) / (centre - left) if f_mel <= centre else (right - f_mel) / (right - centre)
                energies[m] += weight * power[b]
    log_energies = np.log(np.maximum(energies, np.finfo(np.float32).eps))
    cepstra = scipy.fft.dct(log_energies, type=2, norm="ortho")[:n_ceps]
    lifter = 1 + 11.0 * np.sin(np.pi * np.arange(n_ceps) / 22.0)
    return cepstra * lifter


@pytest.mark.parametrize(("fs", "length"), [(100.0, 6000), (500.0, 30000)])
def test_mfcc_matches_step_by_step_reference(rng: np.random.Generator, fs: float, length: int) -> None:
    x = _synthetic_ecg(rng, 1, length, fs)
    got = mfcc_features(x, fs=fs)
    assert got.shape == (1, 93, 13) and got.dtype == np.float32
    spans = token_spans(length, *DEFAULT_CONV_LAYOUTS[fs])
    tokens = [0, 1, 40, 92] if fs == 500.0 else range(93)
    expected = np.array([_reference_mfcc_frame(x[0, a:b], fs) for a, b in spans[list(tokens)]])
    np.testing.assert_allclose(got[0, list(tokens)], expected, rtol=1e-4, atol=1e-4)


def test_mfcc_matches_torchaudio_kaldi_when_installed(rng: np.random.Generator) -> None:
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    x = _synthetic_ecg(rng, 1, 6000, 100.0)
    got = mfcc_features(x, fs=100.0)
    for token, (a, b) in enumerate(token_spans(6000)[:5]):
        frame = torch.tensor(x[0, a:b], dtype=torch.float32)[None]
        expected = kaldi.mfcc(
            frame,
            sample_frequency=100.0,
            frame_length=1000.0 * (b - a) / 100.0,
            frame_shift=10.0,
            use_energy=False,
            dither=0.0,
        )
        np.testing.assert_allclose(got[0, token], expected[0].numpy(), rtol=1e-3, atol=1e-3)


def test_mfcc_deltas_are_regressions_across_tokens(rng: np.random.Generator) -> None:
    x = _synthetic_ecg(rng, 2, 6000, 100.0)
    with_deltas = mfcc_features(x, deltas=True)
    assert with_deltas.shape == (2, 93, 39)
    static = mfcc_features(x)
    np.testing.assert_array_equal(with_deltas[..., :13], static)

    def regression(c: np.ndarray) -> np.ndarray:  # per token, window 5, edges replicated
        n = c.shape[1]
        out = np.zeros_like(c)
        for t in range(n):
            at = lambda i: c[:, min(max(i, 0), n - 1)]  # noqa: E731
            out[:, t] = (2 * (at(t + 2) - at(t - 2)) + (at(t + 1) - at(t - 1))) / 10.0
        return out

    delta = regression(static.astype(np.float64))
    np.testing.assert_allclose(with_deltas[..., 13:26], delta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(with_deltas[..., 26:], regression(delta), rtol=1e-4, atol=1e-4)
    # The reference's one-frame deltas were all zero; across tokens they carry signal.
    assert np.abs(with_deltas[..., 13:]).mean() > 0.05 * np.abs(static).mean()


def test_mfcc_of_flat_signal_is_finite() -> None:
    features = mfcc_features(np.full((2, 6000), 0.25), deltas=True)
    assert np.isfinite(features).all()
    np.testing.assert_allclose(features[..., 13:], 0.0, atol=1e-9)  # constant cepstra: zero deltas


# ------------------------------------------------------------------ combined
def test_hand_features_concatenates_tf_then_mfcc(rng: np.random.Generator) -> None:
    x = _synthetic_ecg(rng, 3, 6000, 100.0).astype(np.float32)
    combined = hand_features(torch.from_numpy(x), "tf+mfcc", 100.0)
    assert combined.shape == (3, 93, 29) == (3, 93, hand_feature_dim("tf+mfcc"))
    np.testing.assert_array_equal(combined[..., :16], time_frequency_features(x))
    np.testing.assert_array_equal(combined[..., 16:], mfcc_features(x))
    assert hand_features(x, "mfcc", mfcc_deltas=True).shape == (3, 93, 39)
    with pytest.raises(FeatureInputError, match=r"^unknown hand-feature kind 'wavelet'"):
        hand_features(x, "wavelet")  # type: ignore[arg-type]


def test_real_ptbxl_records_parity_and_token_alignment() -> None:
    """On real 100 Hz PTB-XL leads: parity with the direct statistics and per-token locality of the peaks."""
    wfdb = pytest.importorskip("wfdb")
    root = shared_path("ptbxl-unlabelled-100hz")
    names = ["records100/00000/00009_lr", "records100/00000/00024_lr"]
    signals = [wfdb.rdrecord(str(root / name)).p_signal[:500].T.reshape(-1) for name in names]
    x = np.stack(signals)  # (2, 6000): 12 leads x 5 s end to end, the model's input layout
    features = hand_features(x, "tf+mfcc", 100.0)
    assert features.shape == (2, 93, 29) and np.isfinite(features).all()
    spans = token_spans(6000)
    expected = np.array([[_direct_tf(row[a:b]) for a, b in spans] for row in x])
    np.testing.assert_allclose(features[..., :16], expected, rtol=1e-5, atol=1e-5)
    # The largest |x| of the record sits inside the spans of exactly the tokens whose peak equals it.
    for row, feats in zip(x, features):
        argmax = int(np.abs(row).argmax())
        holders = np.flatnonzero((spans[:, 0] <= argmax) & (argmax < spans[:, 1]))
        np.testing.assert_array_equal(np.flatnonzero(np.isclose(feats[:, 7], np.abs(row).max())), holders)
