"""Synthetic 12-lead ECGs with known labels, for the demo, tests and benchmarks.

Each beat is a sum of Gaussian waves (P, Q, R, S, T) of a 3-D heart vector; the 12 leads are
projections of that vector on fixed lead directions, with III, aVR, aVL and aVF derived from I and II
exactly as on a real machine (so III = II - I holds). Labels are physiological knobs that change
what the signal looks like:

* ``tachycardia``: heart rate above 100 bpm; ``bradycardia``: below 60 bpm;
* ``wide_qrs``: QRS complex about twice as wide (as in bundle-branch block);
* ``st_elevation``: a raised segment between S and T in the precordial leads;
* ``irregular``: beat-to-beat RR variability as in atrial fibrillation (with the P wave absent).

This is not a model of disease; it gives separable, realistic-looking tasks that run anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYNTHETIC_LABELS = ("tachycardia", "bradycardia", "wide_qrs", "st_elevation", "irregular")

# Unit directions (x: left, y: down, z: anterior) of I, II and V1..V6 (approximate, for realism).
_LEAD_DIRECTIONS = {
    "I": (1.0, 0.0, 0.0),
    "II": (0.5, 0.87, 0.0),
    "V1": (-0.3, 0.1, 0.95),
    "V2": (0.0, 0.1, 1.0),
    "V3": (0.35, 0.15, 0.9),
    "V4": (0.6, 0.2, 0.75),
    "V5": (0.85, 0.15, 0.45),
    "V6": (0.95, 0.1, 0.2),
}


@dataclass
class SyntheticRecord:
    signal: np.ndarray  # (12, n) mV, standard lead order
    fs: float
    labels: dict[str, int]
    heart_rate: float


def _beat_vector(t: np.ndarray, wide: bool, st: bool, p_wave: bool, rng: np.random.Generator) -> np.ndarray:
    """3-D heart vector (3, len(t)) for one beat; t in seconds relative to the R peak."""
    qrs = 2.0 if wide else 1.0
    waves = [  # (centre s, width s, amplitude vector)
        (-0.16, 0.025, (0.10, 0.15, 0.05), p_wave),
        (-0.025 * qrs, 0.010 * qrs, (-0.10, -0.05, 0.30), True),
        (0.0, 0.012 * qrs, (1.00, 1.10, -0.40), True),
        (0.03 * qrs, 0.012 * qrs, (-0.20, -0.25, -0.60), True),
        (0.28, 0.06, (0.25, 0.30, 0.10), True),
    ]
    out = np.zeros((3, len(t)))
    jitter = 1.0 + 0.05 * rng.standard_normal()
    for centre, width, amp, present in waves:
        if present:
            out += np.asarray(amp)[:, None] * jitter * np.exp(-0.5 * ((t - centre) / width) ** 2)
    if st:
        seg = (t > 0.05 * qrs) & (t < 0.25)
        out[2, seg] += 0.25
    return out


def synthetic_record(
    rng: np.random.Generator,
    *,
    fs: float = 500.0,
    seconds: float = 10.0,
    labels: dict[str, int] | None = None,
    noise_mv: float = 0.02,
) -> SyntheticRecord:
    """One synthetic record; ``labels`` fixes the label values (drawn at random when None)."""
    if labels is None:
        rate_class = rng.choice(["normal", "tachycardia", "bradycardia"], p=[0.6, 0.2, 0.2])
        labels = {
            "tachycardia": int(rate_class == "tachycardia"),
            "bradycardia": int(rate_class == "bradycardia"),
            "wide_qrs": int(rng.random() < 0.3),
            "st_elevation": int(rng.random() < 0.25),
            "irregular": int(rng.random() < 0.2),
        }
    hr = (
        rng.uniform(105, 150)
        if labels.get("tachycardia")
        else rng.uniform(40, 55)
        if labels.get("bradycardia")
        else rng.uniform(62, 95)
    )
    n = int(round(seconds * fs))
    t = np.arange(n) / fs
    rr = 60.0 / hr
    beats = []
    pos = rng.uniform(0.1, rr)
    while pos < seconds + 1.0:
        beats.append(pos)
        spread = 0.25 if labels.get("irregular") else 0.03
        pos += rr * (1.0 + spread * rng.standard_normal())
        pos = max(pos, beats[-1] + 0.3)
    vector = np.zeros((3, n))
    for b in beats:
        window = (t > b - 0.4) & (t < b + 0.6)
        vector[:, window] += _beat_vector(
            t[window] - b,
            bool(labels.get("wide_qrs")),
            bool(labels.get("st_elevation")),
            not labels.get("irregular"),
            rng,
        )
    directions = {k: np.asarray(v) / np.linalg.norm(v) for k, v in _LEAD_DIRECTIONS.items()}
    lead_i = directions["I"] @ vector
    lead_ii = directions["II"] @ vector
    wander = 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 2 * np.pi))
    lead_i = lead_i + wander + noise_mv * rng.standard_normal(n)
    lead_ii = lead_ii + 0.8 * wander + noise_mv * rng.standard_normal(n)
    leads = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    for name in ("V1", "V2", "V3", "V4", "V5", "V6"):
        leads.append(directions[name] @ vector + noise_mv * rng.standard_normal(n) + 0.5 * wander)
    return SyntheticRecord(np.asarray(leads, dtype=np.float32), fs, dict(labels), float(hr))


def write_synthetic_dataset(
    out_dir: str | Path, n_records: int, *, seed: int = 0, fs: float = 500.0, seconds: float = 10.0, fmt: str = "npy"
) -> Path:
    """Write ``n_records`` synthetic records and ``labels.csv`` (record_id, split, one column per label).

    ``fmt``: ``npy`` ((12, n) float32 at ``fs``; the reader needs ``fs`` for .npy, so a
    ``records.json`` notes it) or ``wfdb`` (``.hea`` + ``.dat`` in mV, read without extra options).
    Splits: 70 % train, 15 % val, 15 % test, seeded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_records):
        rec = synthetic_record(rng, fs=fs, seconds=seconds)
        rid = f"syn{i:05d}"
        if fmt == "npy":
            np.save(out / f"{rid}.npy", rec.signal)
        elif fmt == "wfdb":
            import wfdb

            wfdb.wrsamp(
                rid,
                fs=fs,
                units=["mV"] * 12,
                sig_name=list(("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")),
                p_signal=rec.signal.T.astype(np.float64),
                fmt=["16"] * 12,
                write_dir=str(out),
            )
        else:
            raise ValueError(f"fmt must be npy or wfdb, got {fmt!r}")
        u = rng.random()
        split = "train" if u < 0.7 else "val" if u < 0.85 else "test"
        rows.append((rid, split, *[rec.labels[k] for k in SYNTHETIC_LABELS]))
    with open(out / "labels.csv", "w") as fh:
        fh.write(",".join(["record_id", "split", *SYNTHETIC_LABELS]) + "\n")
        for row in rows:
            fh.write(",".join(str(v) for v in row) + "\n")
    return out
