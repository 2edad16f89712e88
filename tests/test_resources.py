"""Bounded resources: the FIR band-pass without a taps x taps matrix (100 kHz records), long records
one lead at a time, and junk files detected from their first bytes. Peak memory is measured in a
child process (``resource.getrusage``), as growth over the same child's footprint after imports.
Measured figures: benchmarks/RESULTS_DATA.md ("Peak memory")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.signal import filtfilt, firwin

from hubert_ecg.preprocess import PreprocessSpec, bandpass_taps, fir_filtfilt, preprocess_signal


def peak_growth_mb(body: str, timeout: float = 120) -> dict:
    """Run ``body`` in a fresh Python; returns its JSON result plus ``growth_mb``: peak RSS minus the
    RSS after the imports of the prelude (so the bound is about the work, not the interpreter)."""
    code = (
        textwrap.dedent("""
        import json, resource, sys
        import numpy as np
        import scipy.signal
        from hubert_ecg.preprocess import PreprocessSpec, preprocess_signal
        from hubert_ecg.io import read_record
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = {}
    """)
        + textwrap.dedent(body)
        + textwrap.dedent("""
        result["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(json.dumps(result))
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("numtaps, n, shape", [(151, 5000, (2, 12)), (31, 200, (3,)), (301, 4000, (12,))])
def test_fir_filtfilt_equals_scipy_filtfilt(numtaps, n, shape):
    rng = np.random.default_rng(numtaps)
    taps = firwin(numtaps, [0.01, 0.3], pass_zero=False)
    x = rng.standard_normal((*shape, n)).cumsum(-1) + 50.0  # drift and an offset: the edges matter
    ref = filtfilt(taps, [1.0], x, axis=-1)
    got = fir_filtfilt(taps, x, max_block_samples=3 * n)  # small blocks: the blocking must not change results
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9 * np.abs(ref).max())


def test_leadwise_path_gives_the_batch_result(monkeypatch):
    """Long records go one lead at a time; the result is the same as the vectorised path."""
    import hubert_ecg.preprocess as pp

    x = np.random.default_rng(0).standard_normal((12, 20_000)).cumsum(-1)
    x[4, 100:200] = np.nan
    whole = preprocess_signal(x, 500.0, PreprocessSpec())
    monkeypatch.setattr(pp, "_LEADWISE_ABOVE_SAMPLES", 1000)
    leadwise = preprocess_signal(x, 500.0, PreprocessSpec())
    np.testing.assert_array_equal(leadwise, whole)


def traced_peak_mb(func) -> tuple[object, float]:
    """``func()`` and the peak of memory allocated meanwhile (tracemalloc sees NumPy's buffers)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        value = func()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return value, peak / 2**20


def test_100_khz_record_preprocesses_in_bounded_memory():
    """30001 published taps at 100 kHz: SciPy's filtfilt would build a 30000 x 30000 matrix (7.2 GB)."""
    assert len(bandpass_taps(100_000.0, PreprocessSpec())) == 30001
    x = np.random.default_rng(0).standard_normal((12, 150_000)).astype(np.float32)  # 1.5 s at 100 kHz
    y, peak = traced_peak_mb(lambda: preprocess_signal(x, 100_000.0, PreprocessSpec()))
    assert y.shape == (12, 150)
    assert peak < 120, peak  # input 7 MB; float64 work copies and FFT buffers, a block of leads at a time


@pytest.mark.slow
def test_100_khz_record_peak_rss_in_a_child_process():
    result = peak_growth_mb("""
        x = np.random.default_rng(0).standard_normal((12, 200_000)).astype(np.float32)  # 2 s at 100 kHz
        y = preprocess_signal(x, 100_000.0, PreprocessSpec())
        result["shape"] = list(y.shape)
    """)
    assert result["shape"] == [12, 200]
    assert result["growth_mb"] < 250, result  # measured ~110 MB (input 10 MB, float64 work copies)


@pytest.mark.slow
def test_one_hour_record_stays_under_the_memory_bound():
    """An hour at 500 Hz (86 MB as float32): one lead at a time, growth stays near the input's size."""
    result = peak_growth_mb(
        """
        x = np.random.default_rng(0).standard_normal((12, 500 * 3600)).astype(np.float32)
        y = preprocess_signal(x, 500.0, PreprocessSpec())
        result["shape"] = list(y.shape)
    """,
        timeout=300,
    )
    assert result["shape"] == [12, 360_000]
    assert result["growth_mb"] < 400, result  # input 86 MB; measured ~140 MB (all leads at once: ~650 MB)


@pytest.mark.parametrize(
    "suffix, reason",
    [
        (".csv", "not a text table: binary data (NUL bytes) in the first 64 KiB"),
        (".hea", "not a WFDB header: binary data (NUL bytes) in the first bytes"),
    ],
)
def test_a_1_gb_junk_file_is_refused_from_its_head(suffix, reason, tmp_path):
    junk = tmp_path / f"junk{suffix}"
    with open(junk, "wb") as fh:  # 64 KiB of random bytes, then a sparse hole to 1 GB (no disk used)
        fh.write(np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
        fh.truncate(1 << 30)
    import wfdb  # noqa: F401  (imported before tracing: the reader's own imports are not the file's cost)

    from hubert_ecg.io import read_record

    try:  # warm every lazy import of the readers on a small good file first
        read_record(tmp_path / "none.csv")
    except ValueError:
        pass

    def read() -> str:
        try:
            read_record(junk, fs=500.0)
        except ValueError as err:
            return str(err)
        return ""

    error, peak = traced_peak_mb(read)
    assert error == f"{junk}: {reason}"
    assert peak < 20, peak  # reading the whole file would allocate > 1000 MB


def test_a_large_text_file_named_hea_is_refused_by_its_size(tmp_path):
    junk = tmp_path / "log.hea"
    with open(junk, "w") as fh:
        fh.write("x 12 500 5000\n" + "# a comment line of a log file\n" * 70_000)  # 2 MB of text
    from hubert_ecg.io import read_record

    with pytest.raises(ValueError, match=r"log\.hea: not a WFDB header: 2 MB \(a header is a small text file\)"):
        read_record(junk)
