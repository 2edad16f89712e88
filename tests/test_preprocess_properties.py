"""Property tests (hypothesis) for preprocessing and windowing: shapes, ranges, finiteness,
lead order, scale invariance and mask consistency for any rate, length and amplitude."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.signal import cheby1, sosfiltfilt

from hubert_ecg.config import token_mask_from_sample_mask
from hubert_ecg.preprocess import (
    MissingLeadWarning,
    PreprocessSpec,
    cut_windows,
    preprocess_signal,
    window_starts,
)

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def messy_records(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """A (12, n) record at any rate in [50, 2000] Hz, 1.5-6 s, any amplitude scale and DC offset,
    with NaN runs, infinities, flat leads and entirely missing leads sprinkled in."""
    fs = draw(st.floats(50.0, 2000.0).map(lambda f: round(f, 2)))
    seconds = draw(st.floats(1.5, 6.0))
    scale = 10.0 ** draw(st.floats(-3.0, 9.0))
    offset = draw(st.floats(-1e3, 1e3)) * scale
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = math.ceil(seconds * fs)
    t = np.arange(n) / fs
    x = np.cumsum(rng.standard_normal((12, n)), axis=1) / math.sqrt(fs)  # wander
    x += np.sin(2 * np.pi * rng.uniform(0.5, 40.0, (12, 1)) * t) + 0.1 * rng.standard_normal((12, n))
    x = x * scale + offset
    for lead in draw(st.sets(st.integers(0, 11), max_size=3)):
        x[lead] = offset  # flat lead
    for lead in draw(st.sets(st.integers(0, 11), max_size=3)):
        start = draw(st.integers(0, n - 1))
        x[lead, start : start + draw(st.integers(1, n))] = np.nan
    for lead in draw(st.sets(st.integers(0, 11), max_size=2)):
        x[lead, draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.inf, -np.inf]))
    for lead in draw(st.sets(st.integers(0, 11), max_size=1)):
        x[lead] = np.nan  # whole lead missing
    return x, fs


def run_quietly(x: np.ndarray, fs: float, spec: PreprocessSpec) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingLeadWarning)
        return preprocess_signal(x, fs, spec)


@PROPERTY_SETTINGS
@given(record=messy_records())
def test_minmax_output_is_finite_and_within_unit_range_before_decimation(record):
    x, fs = record
    spec = PreprocessSpec(target_hz=500.0)  # q = 1: the output is the scaled 500 Hz signal itself
    out = run_quietly(x, fs, spec)
    assert out.shape == (12, int(x.shape[1] * 500 / fs))
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= -1.0 and out.max() <= 1.0
    # Every recorded lead reaches -1 exactly; a lead with real variation also reaches +1 (flat leads
    # keep only rounding noise, which the 1e-8 in the min-max denominator squashes). A lead that was
    # never recorded (no finite sample) is 0 throughout.
    absent = ~np.isfinite(x).any(axis=1)
    np.testing.assert_array_equal(out[~absent].min(axis=1), -1.0)
    assert np.all(out[absent] == 0.0)
    spread = np.ptp(out, axis=1)
    assert ((spread < 1e-4) | (out.max(axis=1) >= 1.0 - 1e-4)).all()


def decimation_gain_and_margin() -> tuple[float, int]:
    """Worst-case |output| / |input| (L1 norm of the zero-phase impulse response) of
    scipy.signal.decimate's anti-alias filter for q = 5, and a margin (at 100 Hz) past which the
    edge padding's influence is below 1e-6."""
    sos = cheby1(8, 0.05, 0.8 / 5, output="sos")
    impulse = np.zeros(8001)
    impulse[4000] = 1.0
    response = sosfiltfilt(sos, impulse)
    return float(np.abs(response).sum()), 400 // 5


DECIMATION_GAIN, EDGE_MARGIN = decimation_gain_and_margin()


@PROPERTY_SETTINGS
@given(
    record=messy_records(),
    scaling=st.sampled_from(["minmax", "zscore", "none"]),
    decimation=st.sampled_from(["per_lead", "flattened"]),
)
def test_any_rate_length_and_amplitude_gives_finite_output_of_the_documented_length(record, scaling, decimation):
    x, fs = record
    out = run_quietly(x, fs, PreprocessSpec(scaling=scaling, decimation=decimation))
    n_res = int(x.shape[1] * 500 / fs)
    expected_len = math.ceil(n_res / 5) if decimation == "per_lead" else n_res // 5
    assert out.shape == (12, expected_len)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # Whatever the rate, a record accepted here is long enough to be windowed.
    windows, mask = cut_windows(out, PreprocessSpec(), window_starts(expected_len, 500, mode="sliding"))
    np.testing.assert_array_equal(mask.sum(axis=1), 12 * min(expected_len, 500))
    if scaling == "minmax" and decimation == "per_lead" and expected_len > 2 * EDGE_MARGIN:
        # Min-max puts every lead in [-1, 1]; the anti-alias filter can ring past that, but never by
        # more than its L1 gain (about 2.1), away from the record edges.
        assert np.abs(out[:, EDGE_MARGIN:-EDGE_MARGIN]).max() <= DECIMATION_GAIN + 1e-4


@PROPERTY_SETTINGS
@given(record=messy_records(), permutation=st.permutations(list(range(12))))
def test_per_lead_pipeline_commutes_with_lead_permutation(record, permutation):
    x, fs = record
    spec = PreprocessSpec()
    np.testing.assert_allclose(run_quietly(x[permutation], fs, spec), run_quietly(x, fs, spec)[permutation], atol=1e-6)


@PROPERTY_SETTINGS
@given(
    marked=st.integers(0, 11),
    fs=st.sampled_from([100.0, 250.0, 360.0, 500.0, 1000.0]),
    seconds=st.floats(1.6, 12.0),
    decimation=st.sampled_from(["per_lead", "flattened"]),
)
def test_a_marked_lead_stays_in_its_row(marked, fs, seconds, decimation):
    n = int(seconds * fs)
    x = np.zeros((12, n))
    x[marked] = np.sin(2 * np.pi * 7.0 * np.arange(n) / fs)
    out = preprocess_signal(x, fs, PreprocessSpec(decimation=decimation))
    spread = np.ptp(out, axis=1)
    assert int(np.argmax(spread)) == marked
    # Per lead, the other rows stay exactly flat; flattened decimation smears a little across the
    # junctions of the marked lead, but the marker still dominates.
    others = np.delete(spread, marked)
    assert others.max() < (1e-6 if decimation == "per_lead" else 0.5 * spread[marked])


@PROPERTY_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(-3.0, 6.0).map(lambda e: 10.0**e),
    offset=st.floats(-1e4, 1e4),
    scaling=st.sampled_from(["minmax", "zscore"]),
)
def test_scaled_output_ignores_amplitude_and_offset(seed, scale, offset, scaling):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal((12, 2000)), axis=1) + rng.standard_normal((12, 2000))
    spec = PreprocessSpec(scaling=scaling)
    np.testing.assert_allclose(
        preprocess_signal(scale * (x + offset), 400, spec), preprocess_signal(x, 400, spec), atol=1e-4
    )


@PROPERTY_SETTINGS
@given(
    n=st.integers(1, 5000),
    window=st.integers(1, 1000),
    mode=st.sampled_from(["first", "random", "sliding", "all_non_overlapping"]),
    stride=st.none() | st.integers(1, 1200),
    n_crops=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_window_starts_stay_in_range_and_cover_what_they_promise(n, window, mode, stride, n_crops, seed):
    starts = window_starts(n, window, mode=mode, stride=stride, n_crops=n_crops, rng=seed)
    last = max(n - window, 0)
    assert starts.dtype == np.int64 and starts.min() >= 0 and starts.max() <= last
    if mode == "random":
        assert len(starts) == n_crops
    elif mode == "first":
        assert starts.tolist() == [0]
    else:
        assert starts[0] == 0 and (np.diff(starts) > 0).all()
    if mode == "sliding":
        assert starts[-1] == last  # the tail is covered
        assert (np.diff(starts) <= (stride or window)).all()
    if mode == "all_non_overlapping":
        assert (np.diff(starts) == window).all() and (n < window or n - (starts[-1] + window) < window)


@PROPERTY_SETTINGS
@given(
    m=st.integers(150, 1600),
    mode=st.sampled_from(["first", "random", "sliding", "all_non_overlapping"]),
    stride=st.integers(50, 600),
    seed=st.integers(0, 2**32 - 1),
)
def test_windows_masks_and_token_masks_agree_for_any_length_above_the_minimum(m, mode, stride, seed):
    spec = PreprocessSpec()
    rng = np.random.default_rng(seed)
    signal = rng.uniform(-1, 1, (12, m)).astype(np.float32)
    starts = window_starts(m, spec.window_samples, mode=mode, stride=stride, n_crops=3, rng=rng)
    windows, mask = cut_windows(signal, spec, starts)
    T = spec.window_samples
    valid = min(m, T)
    assert windows.shape == mask.shape == (len(starts), 12 * T)
    per_lead_mask = mask.reshape(len(starts), 12, T)
    # Each lead holds exactly its first `valid` samples, padding at its own end.
    assert (per_lead_mask[:, :, :valid]).all() and not per_lead_mask[:, :, valid:].any()
    per_lead = windows.reshape(len(starts), 12, T)
    for row, start in enumerate(starts):
        np.testing.assert_array_equal(per_lead[row, :, :valid], signal[:, start : start + valid])
    assert (windows[~mask] == 0).all()

    tokens = token_mask_from_sample_mask(mask)
    assert tokens.shape == (len(starts), 93)
    for t in range(93):  # a valid token never sees padding
        field = mask[:, 64 * t : 64 * t + 82]
        np.testing.assert_array_equal(tokens[:, t], field.all(axis=1))
    # min_window_s guarantees every lead at least one token that lies wholly inside it.
    for lead in range(12):
        inside = [t for t in range(93) if 64 * t >= lead * T and 64 * t + 82 <= lead * T + valid]
        assert inside and tokens[:, inside].any(axis=1).all()


spec_strategy = st.builds(
    PreprocessSpec,
    bandpass_hz=st.none() | st.tuples(st.floats(0.0, 1.0), st.floats(2.0, 200.0)),
    filter_taps_factor=st.floats(0.05, 0.45),
    resample_hz=st.none() | st.sampled_from([500.0, 1000.0]),
    scaling=st.sampled_from(["minmax", "zscore", "none"]),
    target_hz=st.sampled_from([50.0, 100.0, 250.0]),
    decimation=st.sampled_from(["per_lead", "flattened"]),
    baseline_highpass_hz=st.none() | st.floats(0.1, 2.0),
    window_s=st.sampled_from([2.0, 5.0, 10.0]),
    min_window_s=st.just(1.5),
    nan_policy=st.sampled_from(["lead_mean", "zero", "raise"]),
)


@PROPERTY_SETTINGS
@given(spec=spec_strategy)
def test_any_valid_spec_round_trips_through_json(spec):
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("scaling", ["minmax", "zscore"])
def test_flat_and_missing_leads_become_constant_rows(scaling):
    x = np.zeros((12, 1000))
    x[0] = np.sin(np.arange(1000) / 10)
    x[3] = 7.0
    x[5] = np.nan
    out = run_quietly(x, 500, PreprocessSpec(scaling=scaling))
    for lead in (3, 5):
        assert np.ptp(out[lead]) < 1e-6
    # Min-max maps a flat lead to its minimum, -1 (times the decimation filter's DC gain); z-score to 0.
    dc = float(sosfiltfilt(cheby1(8, 0.05, 0.16, output="sos"), np.ones(200))[100])
    assert out[3, 0] == pytest.approx(-dc if scaling == "minmax" else 0.0, abs=1e-6)
