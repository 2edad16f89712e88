"""Preprocessing spec, published-pipeline parity, filters, windowing and masks (hubert_ecg.preprocess)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.signal import decimate, filtfilt, firwin, freqz, resample

from conftest import shared_path
from hubert_ecg.config import token_mask_from_sample_mask
from hubert_ecg.preprocess import (
    LEAD_NAMES,
    MissingLeadWarning,
    PreprocessError,
    PreprocessSpec,
    bandpass_taps,
    cut_windows,
    fir_numtaps,
    flatten_window,
    missing_leads,
    preprocess_batch,
    preprocess_signal,
    unflatten_window,
    window_starts,
)

KERNELS = (10, 3, 3, 2, 2)
STRIDES = (4, 2, 2, 2, 2)


# ---------------------------------------------------------------------------------------------
# Helpers: a synthetic ECG-like record and a direct SciPy transcription of the published steps
# ---------------------------------------------------------------------------------------------


def synthetic_ecg(rng: np.random.Generator, seconds: float, fs: float, offset: float = 0.0) -> np.ndarray:
    """(12, n) float64: baseline wander + QRS-like spikes + tones + noise, different per lead."""
    n = int(round(seconds * fs))
    t = np.arange(n) / fs
    leads = []
    for _ in range(12):
        wander = 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t + rng.uniform(0, 6))
        beats = np.zeros(n)
        for beat_time in np.arange(rng.uniform(0, 0.5), seconds, rng.uniform(0.6, 1.1)):
            beats += rng.uniform(-1, 2) * np.exp(-0.5 * ((t - beat_time) / 0.012) ** 2)
        tones = 0.1 * np.sin(2 * np.pi * rng.uniform(1, 30) * t) + 0.05 * np.sin(2 * np.pi * 50 * t)
        leads.append(wander + beats + tones + 0.02 * rng.standard_normal(n) + offset)
    return np.asarray(leads)


def published_offline(x: np.ndarray, fs: float) -> np.ndarray:
    """The published offline step: FIR band-pass (biosppy rule), FFT resample to 500 Hz, min-max."""
    numtaps = int(0.3 * fs)
    if numtaps % 2 == 0:
        numtaps += 1
    taps = firwin(numtaps, 2.0 * np.array([0.05, 47.0]) / fs, pass_zero=False)
    y = filtfilt(taps, [1.0], x, axis=-1)
    y = resample(y, int(x.shape[-1] * 500 / fs), axis=-1)
    lo = y.min(axis=-1, keepdims=True)
    hi = y.max(axis=-1, keepdims=True)
    return 2 * (y - lo) / (hi - lo + 1e-8) - 1


def published_loader_window(x500: np.ndarray, start: int = 0) -> np.ndarray:
    """The published in-loader steps: crop 2500 samples at 500 Hz, flatten leads, decimate q=5."""
    crop = x500[:, start : start + 2500]
    return decimate(crop.reshape(-1), 5)


# ---------------------------------------------------------------------------------------------
# Parity with the published pipeline
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fs, seconds, offset", [(500, 10, 0.0), (500, 7.3, 2000.0), (1000, 10, 0.0), (257, 8, 0.0), (360, 6, -5.0)]
)
def test_default_spec_matches_direct_scipy_pipeline(rng, fs, seconds, offset):
    x = synthetic_ecg(rng, seconds, fs, offset)
    expected = decimate(published_offline(x, fs), 5, axis=-1)
    out = preprocess_signal(x, fs, PreprocessSpec())
    assert out.dtype == np.float32
    assert out.shape == expected.shape == (12, math.ceil(int(x.shape[1] * 500 / fs) / 5))
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


def test_reference_spec_first_window_equals_published_loader_input(rng):
    x = synthetic_ecg(rng, 12.0, 500)
    x500 = published_offline(x, 500)
    out = preprocess_signal(x, 500, PreprocessSpec.reference())
    assert out.shape == (12, 1200)  # two 5 s blocks and a 2 s tail
    np.testing.assert_allclose(flatten_window(out[:, :500]), published_loader_window(x500), atol=1e-6, rtol=0)
    # Later full blocks equal the published crop taken at that block's start.
    np.testing.assert_allclose(flatten_window(out[:, 500:1000]), published_loader_window(x500, 2500), atol=1e-6, rtol=0)
    tail = decimate(x500[:, 5000:].reshape(-1), 5).reshape(12, 200)
    np.testing.assert_allclose(out[:, 1000:], tail, atol=1e-6, rtol=0)


def test_reference_spec_on_real_ludb_record():
    wfdb = pytest.importorskip("wfdb")
    record = shared_path("ludb")
    header = sorted(record.rglob("1.hea"))
    if not header:
        pytest.skip("LUDB record 1 not found")
    signal, fields = wfdb.rdsamp(str(header[0].with_suffix("")))
    x = signal.T  # (12, 5000), leads i..v6 in standard order
    fs = fields["fs"]
    assert [name.lower() for name in fields["sig_name"]] == [name.lower() for name in LEAD_NAMES]
    out = preprocess_signal(x, fs, PreprocessSpec.reference())
    np.testing.assert_allclose(
        flatten_window(out[:, :500]), published_loader_window(published_offline(x, fs)), atol=1e-6, rtol=0
    )
    # Per-lead decimation of a real ECG rings only slightly past the min-max range.
    per_lead = preprocess_signal(x, fs, PreprocessSpec())
    assert np.abs(per_lead).max() <= 1.05


def test_batch_equals_per_record_processing(rng):
    batch = np.stack([synthetic_ecg(rng, 6.0, 400) for _ in range(3)])
    specs = (PreprocessSpec(), PreprocessSpec.reference(), PreprocessSpec(scaling="zscore", baseline_highpass_hz=0.5))
    for spec in specs:
        out = preprocess_batch(batch, 400, spec)
        for i in range(3):
            np.testing.assert_allclose(out[i], preprocess_signal(batch[i], 400, spec), atol=1e-6, rtol=0)


def test_zscore_scaling_matches_definition_before_decimation(rng):
    x = synthetic_ecg(rng, 5.0, 500)
    spec = PreprocessSpec(scaling="zscore", target_hz=500.0)
    taps = bandpass_taps(500, spec)
    y = filtfilt(taps, [1.0], x, axis=-1)
    expected = (y - y.mean(-1, keepdims=True)) / (y.std(-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(preprocess_signal(x, 500, spec), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fs, numtaps", [(500, 151), (1000, 301), (400, 121), (257, 77), (100, 31)])
def test_fir_tap_count_rule(fs, numtaps):
    assert fir_numtaps(fs) == numtaps
    taps = bandpass_taps(fs, PreprocessSpec())
    assert taps is not None and taps.shape == (numtaps,)


@pytest.mark.parametrize("fs", [257, 400, 500, 1000])
def test_published_bandpass_response_after_filtfilt(fs):
    """|H|^2 (forward-backward) as verified on the original: in effect a 47 Hz low-pass, DC gain 0.96."""
    taps = bandpass_taps(fs, PreprocessSpec())
    freqs = np.array([0.0, 0.5, 1.0, 5.0, 10.0, 25.0, 40.0, 47.0, 50.0, 60.0])
    _, response = freqz(taps, worN=freqs, fs=fs)
    power = np.abs(response) ** 2
    expected = [0.96, 0.96, 0.97, 0.99, 1.00, 1.00, 1.00, 0.25, 0.01, 0.00]
    np.testing.assert_allclose(power, expected, atol=0.015)


def test_published_filter_keeps_dc_and_baseline_highpass_removes_it(rng):
    fs = 500
    t = np.arange(10 * fs) / fs
    slow = np.sin(2 * np.pi * 0.1 * t + 0.7)
    fast = 0.5 * np.sin(2 * np.pi * 10 * t)
    x = np.tile(slow + fast, (12, 1))
    no_scaling = dict(scaling="none", target_hz=500.0)
    interior = slice(fs, -fs)

    published = preprocess_signal(x, fs, PreprocessSpec(**no_scaling))[0]
    # The 0.05 Hz edge barely acts: the 0.1 Hz wander passes at |H|^2 ~ 0.96 ...
    assert 2 * np.mean(published * slow) == pytest.approx(0.96, abs=0.02)
    # ... and so does a DC offset, at exactly the squared tap sum.
    dc_gain = float(np.sum(bandpass_taps(fs, PreprocessSpec())) ** 2)
    assert dc_gain == pytest.approx(0.96, abs=0.005)
    constant = preprocess_signal(np.full((12, 5 * fs), 3.0), fs, PreprocessSpec(**no_scaling))
    np.testing.assert_allclose(constant, 3.0 * dc_gain, rtol=1e-6)

    cleaned = preprocess_signal(x, fs, PreprocessSpec(baseline_highpass_hz=0.5, bandpass_hz=None, **no_scaling))[0]
    assert np.abs(cleaned[interior] - fast[interior]).max() < 0.01
    assert np.abs(cleaned - fast).max() < 0.1  # edges too, thanks to the long odd padding


def test_bandpass_above_nyquist_keeps_only_the_highpass_edge():
    taps = bandpass_taps(80, PreprocessSpec())  # 47 Hz is above Nyquist (40 Hz)
    expected = firwin(fir_numtaps(80), 2 * 0.05 / 80, pass_zero=False)
    np.testing.assert_array_equal(taps, expected)
    assert bandpass_taps(80, PreprocessSpec(bandpass_hz=(0.0, 47.0))) is None
    assert bandpass_taps(500, PreprocessSpec(bandpass_hz=None)) is None


# ---------------------------------------------------------------------------------------------
# Non-finite samples
# ---------------------------------------------------------------------------------------------


def test_nan_and_inf_become_the_lead_mean_and_an_empty_lead_becomes_zeros(rng):
    x = synthetic_ecg(rng, 5.0, 500)
    dirty = x.copy()
    dirty[2, 100:140] = np.nan
    dirty[2, 700] = np.inf
    dirty[7, :] = np.nan
    assert missing_leads(dirty).tolist() == [lead == 7 for lead in range(12)]

    filled = x.copy()
    finite_mean = np.mean(np.delete(x[2], np.r_[100:140, 700]))
    filled[2, 100:140] = finite_mean
    filled[2, 700] = finite_mean
    filled[7, :] = 0.0
    spec = PreprocessSpec()
    with pytest.warns(MissingLeadWarning, match=r"no finite samples, replaced by zeros: lead V2$"):
        out = preprocess_signal(dirty, 500, spec)
    recorded = [lead for lead in range(12) if lead != 7]
    np.testing.assert_allclose(out[recorded], preprocess_signal(filled, 500, spec)[recorded], atol=1e-6)
    # A lead that was never recorded is 0 in the model input (not min-max's -1 for a flat lead).
    assert np.all(out[7] == 0.0)

    zero_filled = x.copy()
    zero_filled[2, 100:140] = 0.0
    zero_filled[2, 700] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingLeadWarning)
        out_zero = preprocess_signal(
            np.where(np.arange(12)[:, None] == 7, x, dirty), 500, PreprocessSpec(nan_policy="zero")
        )
    expected = preprocess_signal(np.where(np.arange(12)[:, None] == 7, x, zero_filled), 500, spec)
    np.testing.assert_allclose(out_zero, expected, atol=1e-6)


def test_nan_policy_raise_names_the_lead(rng):
    x = synthetic_ecg(rng, 5.0, 500)
    x[4, 10:13] = np.nan
    with pytest.raises(PreprocessError, match=r"^lead aVL has 3 non-finite sample\(s\) and nan_policy is 'raise'$"):
        preprocess_signal(x, 500, PreprocessSpec(nan_policy="raise"))
    with pytest.raises(PreprocessError, match=r"^record 1, lead aVL has 3"):
        preprocess_batch(np.stack([np.nan_to_num(x), x]), 500, PreprocessSpec(nan_policy="raise"))


# ---------------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------------


def test_bad_shapes_and_short_records_give_one_line_errors(rng):
    spec = PreprocessSpec()
    with pytest.raises(
        PreprocessError,
        match=r"^expected a signal of shape \(12, samples\), got \(5000, 12\) "
        r"\(leads must be rows; transposed\?\)$",
    ):
        preprocess_signal(np.zeros((5000, 12)), 500, spec)
    with pytest.raises(
        PreprocessError, match=r"^expected signals of shape \(batch, 12, samples\), got \(2, 8, 5000\)$"
    ):
        preprocess_batch(np.zeros((2, 8, 5000)), 500, spec)
    with pytest.raises(
        PreprocessError, match=r"^record is 600 samples \(1\.200 s at 500 Hz\) long; the minimum is 1\.5 s$"
    ):
        preprocess_signal(np.zeros((12, 600)), 500, spec)
    with pytest.raises(
        PreprocessError, match=r"^cannot decimate 360 Hz to target_hz 100 by an integer factor; set resample_hz$"
    ):
        preprocess_signal(synthetic_ecg(rng, 3.0, 360), 360, PreprocessSpec(resample_hz=None))
    with pytest.raises(PreprocessError, match=r"^fs must be > 0, got -1$"):
        preprocess_signal(np.zeros((12, 5000)), -1, spec)


def test_resample_none_decimates_from_the_native_rate(rng):
    x = synthetic_ecg(rng, 4.0, 500)
    spec = PreprocessSpec(resample_hz=None)
    taps = bandpass_taps(500, spec)
    y = filtfilt(taps, [1.0], x, axis=-1)
    y = 2 * (y - y.min(-1, keepdims=True)) / (y.max(-1, keepdims=True) - y.min(-1, keepdims=True) + 1e-8) - 1
    np.testing.assert_allclose(preprocess_signal(x, 500, spec), decimate(y, 5, axis=-1), atol=1e-6)
    # A record already at the target rate passes without decimation (e.g. PTB-XL records100).
    assert preprocess_signal(synthetic_ecg(rng, 10.0, 100), 100, spec).shape == (12, 1000)


# ---------------------------------------------------------------------------------------------
# Spec serialisation and validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(),
        PreprocessSpec.reference(),
        PreprocessSpec(
            bandpass_hz=None, resample_hz=None, scaling="none", baseline_highpass_hz=0.5, nan_policy="raise"
        ),
        PreprocessSpec(target_hz=50.0, window_s=10.0, min_window_s=2.0, scaling="zscore"),
    ],
)
def test_spec_round_trips_through_json(spec):
    text = json.dumps(spec.to_dict())
    restored = PreprocessSpec.from_dict(json.loads(text))
    assert restored == spec
    assert restored.to_dict() == spec.to_dict()


def test_reference_spec_is_the_published_pipeline():
    ref = PreprocessSpec.reference()
    assert ref.to_dict() == {
        "bandpass_hz": [0.05, 47.0],
        "filter_taps_factor": 0.3,
        "resample_hz": 500.0,
        "scaling": "minmax",
        "target_hz": 100.0,
        "decimation": "flattened",
        "baseline_highpass_hz": None,
        "window_s": 5.0,
        "min_window_s": 1.5,
        "nan_policy": "lead_mean",
    }
    assert ref.window_samples == 500 and ref.min_window_samples == 150


def test_from_dict_fills_missing_keys_with_defaults_and_normalises_numbers():
    spec = PreprocessSpec.from_dict({"bandpass_hz": [1, 40], "target_hz": 100})
    assert spec.bandpass_hz == (1.0, 40.0) and isinstance(spec.target_hz, float)
    assert spec == PreprocessSpec(bandpass_hz=(1.0, 40.0))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"bandpass": [0.05, 47]}, r"^unknown preprocessing key\(s\) \['bandpass'\]; known keys: \["),
        ({"scaling": "robust"}, r"^scaling must be one of \['minmax', 'zscore', 'none'\], got 'robust'$"),
        ({"decimation": "flat"}, r"^decimation must be one of \['per_lead', 'flattened'\], got 'flat'$"),
        ({"nan_policy": "drop"}, r"^nan_policy must be one of \['lead_mean', 'zero', 'raise'\], got 'drop'$"),
        ({"bandpass_hz": [47, 0.05]}, r"^bandpass_hz must satisfy 0 <= low < high, got \(47, 0\.05\)$"),
        ({"bandpass_hz": [1, 2, 3]}, r"^bandpass_hz must be None or \(low, high\) in Hz, got \(1, 2, 3\)$"),
        ({"target_hz": "100"}, r"^target_hz must be a number, got '100'$"),
        ({"window_s": True}, r"^window_s must be a number, got True$"),
        ({"target_hz": 0}, r"^target_hz must be > 0, got 0\.0$"),
        ({"resample_hz": float("nan")}, r"^resample_hz must be finite, got nan$"),
        ({"target_hz": 150.0}, r"^resample_hz / target_hz must be a positive integer, got 500 / 150$"),
        ({"window_s": 5.005}, r"^window_s \* target_hz must be a whole number of samples, got 5\.005 \* 100$"),
        ({"min_window_s": 6.0}, r"^min_window_s \(6\) must not exceed window_s \(5\)$"),
        ({"min_window_s": 0.5}, r"^filter_taps_factor 0\.3 s is too long for min_window_s 0\.5 s"),
    ],
)
def test_from_dict_rejects_bad_keys_and_values(data, message):
    with pytest.raises(PreprocessError, match=message):
        PreprocessSpec.from_dict(data)


def test_from_dict_rejects_non_dict():
    with pytest.raises(PreprocessError, match=r"^preprocessing spec must be a dict, got list$"):
        PreprocessSpec.from_dict([("scaling", "minmax")])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Windows, padding and masks
# ---------------------------------------------------------------------------------------------


def test_window_starts_modes():
    assert window_starts(1000, 500).tolist() == [0]
    assert window_starts(1000, 500, mode="all_non_overlapping").tolist() == [0, 500]
    assert window_starts(1299, 500, mode="all_non_overlapping").tolist() == [0, 500]
    assert window_starts(1299, 500, mode="sliding").tolist() == [0, 500, 799]
    assert window_starts(1300, 500, mode="sliding", stride=250).tolist() == [0, 250, 500, 750, 800]
    assert window_starts(1000, 500, mode="sliding", stride=250).tolist() == [0, 250, 500]
    assert window_starts(300, 500, mode="sliding").tolist() == [0]
    assert window_starts(300, 500, mode="random", n_crops=3).tolist() == [0, 0, 0]
    starts = window_starts(1000, 500, mode="random", n_crops=200, rng=7)
    assert starts.dtype == np.int64 and starts.min() >= 0 and starts.max() <= 500
    assert len(np.unique(starts)) > 100  # uniform over 501 positions, not a constant
    again = window_starts(1000, 500, mode="random", n_crops=200, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(starts, again)


def test_window_starts_rejects_bad_arguments():
    with pytest.raises(
        PreprocessError,
        match=r"^mode must be one of "
        r"\['first', 'random', 'sliding', 'all_non_overlapping'\], got 'tiles'$",
    ):
        window_starts(1000, 500, mode="tiles")
    with pytest.raises(PreprocessError, match=r"^stride must be a positive integer, got 0$"):
        window_starts(1000, 500, mode="sliding", stride=0)
    with pytest.raises(PreprocessError, match=r"^n must be a positive integer, got 0$"):
        window_starts(0, 500)


def test_cut_windows_slices_and_flattens_full_windows(rng):
    spec = PreprocessSpec()
    signal = rng.standard_normal((12, 1234)).astype(np.float32)
    starts = window_starts(1234, 500, mode="sliding", stride=300)
    windows, mask = cut_windows(signal, spec, starts)
    assert windows.shape == mask.shape == (len(starts), 6000)
    assert windows.dtype == np.float32 and mask.dtype == bool and mask.all()
    for row, start in enumerate(starts):
        np.testing.assert_array_equal(windows[row], signal[:, start : start + 500].reshape(-1))
        np.testing.assert_array_equal(unflatten_window(windows[row]), signal[:, start : start + 500])


def test_short_record_is_padded_at_the_end_of_each_lead(rng):
    spec = PreprocessSpec()
    signal = rng.uniform(0.5, 1.0, (12, 320)).astype(np.float32)  # 3.2 s: valid but short
    windows, mask = cut_windows(signal, spec, window_starts(320, 500))
    per_lead = windows.reshape(1, 12, 500)
    per_lead_mask = mask.reshape(1, 12, 500)
    np.testing.assert_array_equal(per_lead[0, :, :320], signal)
    assert (per_lead[0, :, 320:] == 0).all()
    assert per_lead_mask[0, :, :320].all() and not per_lead_mask[0, :, 320:].any()
    # In the flattened vector the padding sits inside: lead II starts at 500, right after lead I's pad.
    assert mask[0, 319] and not mask[0, 320] and not mask[0, 499] and mask[0, 500]


def test_cut_windows_errors(rng):
    spec = PreprocessSpec()
    with pytest.raises(
        PreprocessError,
        match=r"^record is 120 samples \(1\.20 s at 100 Hz\) long; "
        r"the minimum is 1\.5 s \(150 samples\)$",
    ):
        cut_windows(np.zeros((12, 120)), spec, [0])
    with pytest.raises(
        PreprocessError, match=r"^window start 501 out of range \[0, 500\] for a record of 1000 samples$"
    ):
        cut_windows(np.zeros((12, 1000)), spec, [0, 501])
    with pytest.raises(PreprocessError, match=r"^window start 10 out of range \[0, 0\] for a record of 300 samples$"):
        cut_windows(np.zeros((12, 300)), spec, [10])
    with pytest.raises(
        PreprocessError, match=r"^expected a preprocessed signal of shape \(12, samples\), got \(6000,\)$"
    ):
        cut_windows(np.zeros(6000), spec, [0])


def hf_output_length(length: int) -> int:
    """HF Hubert `_get_feat_extract_output_lengths`: floor((L - k) / s) + 1 chained over the conv layers."""
    for kernel, stride in zip(KERNELS, STRIDES):
        length = (length - kernel) // stride + 1
    return length


def test_token_mask_counts_equal_the_hf_length_formula_for_right_padding():
    lengths = np.arange(0, 6001)
    sample_mask = np.arange(6000)[None, :] < lengths[:, None]  # (6001, 6000) right-padded
    token_mask = token_mask_from_sample_mask(sample_mask)
    assert token_mask.shape == (6001, 93)
    counts = token_mask.sum(axis=1)
    expected = np.array([max(hf_output_length(int(v)), 0) for v in lengths])
    np.testing.assert_array_equal(counts, expected)
    # Valid tokens form a prefix, like HF's length-based mask.
    np.testing.assert_array_equal(token_mask, np.arange(93)[None, :] < counts[:, None])
    assert [hf_output_length(n) for n in (6000, 12000, 3000)] == [93, 187, 46]


def test_token_mask_matches_transformers_and_torch_path():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.HubertConfig(
        conv_dim=(4,) * 5,
        conv_kernel=KERNELS,
        conv_stride=STRIDES,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        num_conv_pos_embeddings=2,
        num_conv_pos_embedding_groups=1,
    )
    model = transformers.HubertModel(config)
    lengths = torch.arange(82, 6001, 7)
    hf_counts = model._get_feat_extract_output_lengths(lengths)
    sample_mask = torch.arange(6000)[None, :] < lengths[:, None]
    token_mask = token_mask_from_sample_mask(sample_mask)
    assert isinstance(token_mask, torch.Tensor) and token_mask.dtype == torch.bool
    assert torch.equal(token_mask.sum(dim=1), hf_counts)
    np.testing.assert_array_equal(token_mask.numpy(), token_mask_from_sample_mask(sample_mask.numpy()))


def test_token_mask_equals_receptive_field_check_for_interior_padding(rng):
    sample_mask = rng.random((16, 6000)) > 0.002  # scattered holes, not right padding
    sample_mask[:, 3000:3150] = False
    token_mask = token_mask_from_sample_mask(sample_mask)
    brute = np.array([[sample_mask[b, 64 * t : 64 * t + 82].all() for t in range(93)] for b in range(16)])
    np.testing.assert_array_equal(token_mask, brute)


def test_token_mask_errors():
    with pytest.raises(ValueError, match=r"^mask of length 9 is shorter than conv kernel 10$"):
        token_mask_from_sample_mask(np.ones((1, 9), dtype=bool))
    with pytest.raises(ValueError, match=r"^conv_kernels \(10, 3\) and conv_strides \(4,\) differ in length$"):
        token_mask_from_sample_mask(np.ones((1, 100), dtype=bool), (10, 3), (4,))


def test_flatten_window_puts_leads_end_to_end():
    x = np.arange(2 * 12 * 5).reshape(2, 12, 5)
    flat = flatten_window(x)
    assert flat.shape == (2, 60)
    np.testing.assert_array_equal(flat[1, 5:10], x[1, 1])
    np.testing.assert_array_equal(unflatten_window(flat), x)
    with pytest.raises(PreprocessError, match=r"^last axis of shape \(2, 61\) is not a multiple of 12 leads$"):
        unflatten_window(np.zeros((2, 61)))
