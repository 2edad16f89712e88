"""Shared fixtures: paths to the optional real-data folder, the synthetic store builder and small helpers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HUBERT_ECG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/data, or skip the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def single_threaded() -> Iterator[None]:
    """One BLAS/OpenMP/torch thread: sklearn's k-means is many times slower on tiny data when 2 CI cores are
    shared, and a torch result compared to a reference must not depend on the thread count. Restored after.

    Modules that need it everywhere declare ``pytestmark = pytest.mark.usefixtures("single_threaded")``.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's own pool: threadpoolctl only sees it when torch shares the system libgomp
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(torch_threads)


StoreFactory = Callable[..., Path]

# A make_store split pattern: a quarter test, a quarter val, half train, in runs of two so that both classes of a
# two-class rhythm set are in every split.
QUARTER_SPLITS = ("test", "test", "val", "val", "train", "train", "train", "train")

# make_store(rhythm=...): (tachycardia, bradycardia) of each heart-rate class; a record's class is its index mod
# the number of classes, so every class has the same count and the split pattern crosses all of them.
RHYTHM_CLASSES = {
    2: ((0, 1), (1, 0)),  # slow, fast
    3: ((0, 0), (1, 0), (0, 1)),  # normal, fast, slow
}


def _write_rhythm_records(
    data: Path, n_records: int, *, classes: int, splits: Sequence[str], seed: int, fs: float, seconds: float
) -> None:
    """Records ``r000.npy``... separable by heart rate, and ``labels.csv``: record_id, split (``splits``
    repeated), fast and tachycardia (the same 0/1 column under two names), rate_class (class index), heart_rate
    (bpm / 100)."""
    from hubert_ecg.synthetic import synthetic_record

    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["record_id,split,fast,tachycardia,rate_class,heart_rate"]
    for i in range(n_records):
        cls = i % classes
        tachycardia, bradycardia = RHYTHM_CLASSES[classes][cls]
        rec = synthetic_record(
            rng, labels={"tachycardia": tachycardia, "bradycardia": bradycardia}, fs=fs, seconds=seconds
        )
        np.save(data / f"r{i:03d}.npy", rec.signal)
        split = splits[i % len(splits)]
        lines.append(f"r{i:03d},{split},{tachycardia},{tachycardia},{cls},{rec.heart_rate / 100:.4f}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")


def _write_given_records(
    data: Path, signals: Sequence[np.ndarray], label_rows: Sequence[Mapping[str, object]] | None
) -> None:
    """``signals[i]`` as ``r{i:03d}.npy`` and, with ``label_rows`` (one per signal), ``labels.csv``."""
    data.mkdir(parents=True, exist_ok=True)
    for i, signal in enumerate(signals):
        np.save(data / f"r{i:03d}.npy", signal)
    if label_rows is not None:
        columns = list(label_rows[0])
        lines = [",".join(["record_id", *columns])]
        lines += [",".join([f"r{i:03d}", *(str(row[c]) for c in columns)]) for i, row in enumerate(label_rows)]
        (data / "labels.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def make_store(tmp_path_factory: pytest.TempPathFactory) -> StoreFactory:
    """The one builder of synthetic stores: ``make_store(n_records, ...) -> store path``.

    Records (``.npy``, 12 leads, read at ``fs``) and their ``labels.csv`` go to ``<root>/data``, the store to
    ``<root>/<name>``. The records are

    - by default :func:`hubert_ecg.synthetic.write_synthetic_dataset` (random labels: the ``SYNTHETIC_LABELS``
      columns; seeded 70/15/15 splits);
    - with ``rhythm=2`` (slow/fast) or ``3`` (normal/fast/slow): separable by heart rate, label columns ``fast``
      (= ``tachycardia``), ``rate_class`` and ``heart_rate``; ``splits`` is the split pattern, repeated over them;
    - with ``signals`` (``n_records`` is then unused): these arrays as ``r000.npy``...; ``label_rows`` (one
      mapping of column -> value per signal, ``""`` for a blank cell, a ``split`` column) writes their
      ``labels.csv``.

    ``labels``: the label columns the store keeps (None: an unlabelled store; the ``split`` column gives the
    splits); ``prepare_kwargs`` go to ``prepare_store`` (``shard_records``, ``split_fractions``, ...). A second
    store on the same ``root`` reuses its records. Without ``root`` the store is built once per session for these
    arguments and shared: read it only; a test that writes into the store or next to it passes its own ``root``.
    """
    from hubert_ecg.store import LabelTable, prepare_store
    from hubert_ecg.synthetic import write_synthetic_dataset

    shared: dict[str, Path] = {}
    written: dict[Path, str] = {}

    def make(
        n_records: int = 24,
        *,
        seed: int = 0,
        fs: float = 500.0,
        seconds: float = 5.0,
        rhythm: int | None = None,
        splits: Sequence[str] | None = None,
        signals: Sequence[np.ndarray] | None = None,
        label_rows: Sequence[Mapping[str, object]] | None = None,
        labels: Sequence[str] | None = None,
        root: Path | None = None,
        name: str = "store",
        **prepare_kwargs: Any,
    ) -> Path:
        if (rhythm is None) != (splits is None):
            raise ValueError("splits is the split pattern of rhythm records: pass both or neither")
        if (signals is None and label_rows is not None) or (signals is not None and rhythm is not None):
            raise ValueError("label_rows go with signals, and signals replace the synthetic or rhythm records")
        given = None
        if signals is not None:
            # Arrays are not hashable: the records are known by their bytes.
            digest = hashlib.sha256()
            for signal in signals:
                digest.update(repr((signal.shape, signal.dtype.str)).encode() + np.ascontiguousarray(signal).tobytes())
            given = (digest.hexdigest(), repr(label_rows))
        records = repr((n_records, seed, fs, seconds, rhythm, splits and tuple(splits), given))
        if root is None:
            key = repr((records, labels and tuple(labels), name, sorted(prepare_kwargs.items())))
            if key not in shared:
                shared[key] = make(
                    n_records,
                    seed=seed,
                    fs=fs,
                    seconds=seconds,
                    rhythm=rhythm,
                    splits=splits,
                    signals=signals,
                    label_rows=label_rows,
                    labels=labels,
                    root=tmp_path_factory.mktemp("store"),
                    name=name,
                    **prepare_kwargs,
                )
            return shared[key]
        data = root / "data"
        if data not in written:
            if signals is not None:
                _write_given_records(data, signals, label_rows)
            elif rhythm is not None:
                _write_rhythm_records(
                    data, n_records, classes=rhythm, splits=splits or (), seed=seed, fs=fs, seconds=seconds
                )
            else:
                write_synthetic_dataset(data, n_records, fmt="npy", seed=seed, fs=fs, seconds=seconds)
            written[data] = records
        elif written[data] != records:
            raise ValueError(f"{data} already holds other records than the ones asked for")
        table = (
            None
            if labels is None
            else LabelTable.from_csv(
                data / "labels.csv", id_column="record_id", split_column="split", label_columns=list(labels)
            )
        )
        prepare_store([data], root / name, labels=table, read_kwargs={"fs": fs}, progress=False, **prepare_kwargs)
        return root / name

    return make


def synthetic_12_lead(rng: np.random.Generator, n: int = 2000, fs: float = 500.0) -> np.ndarray:
    """(12, n) mV signal obeying Einthoven and Goldberger, ~1 mV QRS-like spikes."""
    t = np.arange(n) / fs
    beats = sum(np.exp(-(((t - c) / 0.012) ** 2)) for c in np.arange(0.3, t[-1], 0.8))
    lead_i = 0.8 * beats + 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(n)
    lead_ii = 1.2 * beats + 0.08 * np.sin(2 * np.pi * 1.1 * t) + 0.01 * rng.standard_normal(n)
    chest = np.stack([(k - 2.5) * 0.4 * beats + 0.01 * rng.standard_normal(n) for k in range(6)])
    limb = np.stack(
        [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    )
    return np.vstack([limb, chest])
