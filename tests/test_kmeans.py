"""k-means library: recovery, sklearn parity, one normalisation for fit and assign, safe storage, metrics."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score
from sklearn.preprocessing import Normalizer

from conftest import shared_path
from hubert_ecg.pretraining.kmeans import (
    FeatureNormaliser,
    KMeansFileError,
    KMeansInputError,
    KMeansMetadata,
    KMeansModel,
    cluster_quality,
    fit_kmeans,
    sweep_k,
)

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture
def blobs() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(6000, n_features=6, centers=8, cluster_std=0.4, center_box=(-10, 10), random_state=1)
    return x.astype(np.float32), y


def _chunks(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


# ------------------------------------------------------------------ fitting
@pytest.mark.parametrize("normaliser", ["none", "standardise", "standardise+l2"])
def test_recovers_separated_blobs_in_memory_and_streaming(blobs, normaliser: str) -> None:
    x, y = blobs
    in_memory = fit_kmeans(x, 8, normaliser=normaliser, seed=0)
    # A one-shot generator of uneven chunks: features never have to be in memory together.
    streamed = fit_kmeans(_chunks(x, 700), 8, normaliser=normaliser, seed=0, batch_size=1000)
    assert adjusted_rand_score(y, in_memory.assign(x)) > 0.95
    assert adjusted_rand_score(y, streamed.assign(x)) > 0.95
    assert streamed.metadata.n_fit_rows == len(x) and streamed.metadata.backend == "sklearn"


def test_fit_equals_sklearn_on_l2_normalised_rows_and_assign_equals_predict(rng: np.random.Generator) -> None:
    x = rng.gamma(2.0, size=(3000, 5)).astype(np.float32) * np.array([1, 10, 100, 1, 0.1], dtype=np.float32)
    model = fit_kmeans(x, 12, normaliser="l2", seed=3, batch_size=512)
    reference = MiniBatchKMeans(
        n_clusters=12, init="k-means++", batch_size=512, max_iter=100, random_state=3, compute_labels=False, n_init=1
    ).fit(Normalizer().transform(x))
    np.testing.assert_allclose(model.centroids, reference.cluster_centers_, rtol=1e-5, atol=1e-6)
    # assign() takes raw rows and normalises them itself; sklearn's predict needs them pre-normalised.
    held_out = rng.gamma(2.0, size=(2000, 5)).astype(np.float32) * np.array([1, 10, 100, 1, 0.1], dtype=np.float32)
    np.testing.assert_array_equal(model.assign(held_out), reference.predict(Normalizer().transform(held_out)))


def test_streaming_standardiser_is_fitted_on_the_first_chunks(blobs) -> None:
    x, _ = blobs
    model = fit_kmeans(_chunks(x, 500), 8, normaliser="standardise", normaliser_rows=1000, batch_size=1000)
    np.testing.assert_allclose(model.normaliser.mean, x[:1000].astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.normaliser.std, x[:1000].astype(np.float64).std(axis=0), rtol=1e-6)
    sample_fitted = fit_kmeans(x, 8, normaliser="standardise", normaliser_sample=x[-100:])
    np.testing.assert_allclose(sample_fitted.normaliser.mean, x[-100:].astype(np.float64).mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("mode", ["l2", "standardise"])
def test_assign_applies_the_fit_normalisation_to_raw_features(rng: np.random.Generator, mode: str) -> None:
    """Clusters that exist only after normalisation are recovered from raw rows; the reference's raw
    prediction against normalised centroids (its §10 bug) is not, which shows this test detects it."""
    n = 4000
    truth = rng.integers(0, 4, size=n)
    if mode == "l2":  # clusters are directions of different spreads; magnitudes are tiny and vary 10-fold
        spread = np.array([0.02, 0.1, 0.2, 0.3])[truth, None]
        directions = np.eye(4)[truth] + spread * rng.standard_normal((n, 4))
        x = directions * rng.uniform(0.001, 0.01, size=(n, 1))
    else:  # clusters live in tiny-scale dimensions next to a huge, uninformative one
        x = np.column_stack(
            [0.001 * np.eye(4)[truth] * 3 + 0.0001 * rng.standard_normal((n, 4)), 1000 * rng.standard_normal(n)]
        )
    model = fit_kmeans(x.astype(np.float32), 4, normaliser=mode, seed=0)
    assert adjusted_rand_score(truth, model.assign(x)) > 0.95
    raw_labels = ((x[:, None, :] - model.centroids[None]) ** 2).sum(-1).argmin(1)
    assert adjusted_rand_score(truth, raw_labels) < 0.5


def test_several_epochs_need_a_reiterable_source(blobs) -> None:
    x, y = blobs
    with pytest.raises(KMeansInputError, match=r"^several epochs need a re-iterable feature source"):
        fit_kmeans(_chunks(x, 1000), 8, epochs=2)
    model = fit_kmeans(lambda: _chunks(x, 1000), 8, epochs=3, batch_size=1000, normaliser="none", n_threads=1)
    assert model.metadata.n_fit_rows == len(x)
    assert adjusted_rand_score(y, model.assign(x)) > 0.95


def test_single_pass_over_a_small_array(blobs) -> None:
    """One epoch over fewer rows than batch_size must still fit (sklearn alone fails after one step)."""
    x, y = blobs
    model = fit_kmeans(x[:3000], 8, epochs=1, batch_size=10_000, normaliser="none")
    assert model.metadata.n_fit_rows == 3000
    assert adjusted_rand_score(y[:3000], model.assign(x[:3000])) > 0.9


def test_fit_rejects_bad_input(blobs) -> None:
    x, _ = blobs
    too_few = r"^k-means with k=50 needs at least 50 rows in the first batch, got 40$"
    with pytest.raises(KMeansInputError, match=too_few):
        fit_kmeans(x[:40], 50)
    bad = x[:1000].copy()
    bad[123, 2] = np.nan
    with pytest.raises(KMeansInputError, match=r"^feature chunk 1: row 123 has non-finite values \(NaN or inf\)$"):
        fit_kmeans([x[:1000], bad], 4, batch_size=5000)
    with pytest.raises(KMeansInputError, match=r"^feature chunk 1: 5 dimensions, earlier chunks had 6$"):
        fit_kmeans([x[:1000], x[:1000, :5]], 4, batch_size=5000)


def test_faiss_backend_is_optional(blobs) -> None:
    x, y = blobs
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(KMeansInputError, match=r"^backend='faiss' needs the faiss package: pip install faiss-cpu"):
            fit_kmeans(x, 8, backend="faiss")
    else:
        model = fit_kmeans(x, 8, backend="faiss", normaliser="none", seed=0)
        assert model.metadata.backend == "faiss" and adjusted_rand_score(y, model.assign(x)) > 0.95


# ------------------------------------------------------------------ assignment
def test_assign_shapes_dtypes_and_torch_path(blobs) -> None:
    x, _ = blobs
    model = fit_kmeans(x, 8, normaliser="standardise+l2")
    tokens = x[:930].reshape(10, 93, 6)
    labels = model.assign(tokens, batch_size=97)
    assert labels.shape == (10, 93) and labels.dtype == np.int16
    np.testing.assert_array_equal(labels.reshape(-1), model.assign(x[:930]))
    np.testing.assert_array_equal(model.assign(torch.from_numpy(x), device="cpu", batch_size=1000), model.assign(x))
    big = KMeansModel(np.random.default_rng(0).standard_normal((40000, 6)), FeatureNormaliser("none"))
    assert big.assign(x[:5]).dtype == np.int32
    with pytest.raises(KMeansInputError, match=r"^features have 5 dimensions, the k-means model has 6$"):
        model.assign(x[:, :5])


# ------------------------------------------------------------------ storage
@pytest.mark.parametrize("as_directory", [False, True])
def test_save_load_round_trip(blobs, tmp_path: Path, as_directory: bool) -> None:
    x, _ = blobs
    meta = KMeansMetadata(kind="tf+mfcc", layer=None, source_checkpoint="none", extra={"note": "test"})
    model = fit_kmeans(x, 8, normaliser="standardise+l2", seed=7, metadata=meta)
    target = tmp_path / ("km" if as_directory else "km.safetensors")
    written = model.save(target)
    assert written.suffix == ".safetensors" and written.is_file()
    loaded = KMeansModel.load(target)
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    np.testing.assert_array_equal(loaded.normaliser.mean, model.normaliser.mean)
    np.testing.assert_array_equal(loaded.normaliser.std, model.normaliser.std)
    assert loaded.normaliser.mode == "standardise+l2"
    assert loaded.metadata == model.metadata and loaded.metadata.seed == 7 and loaded.metadata.n_fit_rows == len(x)
    np.testing.assert_array_equal(loaded.assign(x), model.assign(x))


def test_load_refuses_pickle_and_foreign_files(blobs, tmp_path: Path) -> None:
    x, _ = blobs
    estimator = MiniBatchKMeans(n_clusters=3, random_state=0, n_init=1).fit(x)
    pickled = tmp_path / "k_means_100_morphology.bin"
    pickled.write_bytes(pickle.dumps(estimator))
    with pytest.raises(KMeansFileError, match=r"k_means_100_morphology\.bin: pickle/joblib k-means files are refused"):
        KMeansModel.load(pickled)
    from safetensors.numpy import save_file

    foreign = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(foreign))
    with pytest.raises(KMeansFileError, match=r"other\.safetensors: safetensors file without hubert-ecg k-means"):
        KMeansModel.load(foreign)
    with pytest.raises(KMeansFileError, match=r"missing\.safetensors: k-means file not found$"):
        KMeansModel.load(tmp_path / "missing.safetensors")
    # The supported way to bring a reference model over: unpickle it yourself, wrap, save.
    converted = KMeansModel.from_sklearn(estimator, FeatureNormaliser("none"))
    np.testing.assert_array_equal(converted.assign(x), estimator.predict(x))


# ------------------------------------------------------------------ quality
def test_cluster_quality_matches_sklearn(blobs) -> None:
    x, _ = blobs
    model = fit_kmeans(x[:4000], 8, normaliser="standardise", seed=0)
    held_out = x[4000:]
    quality = cluster_quality(model, held_out, max_rows=10_000)
    normalised = model.normaliser.transform(held_out)
    labels = model.assign(held_out)
    assert quality["n_rows"] == quality["n_rows_scored"] == len(held_out)
    assert quality["davies_bouldin"] == pytest.approx(davies_bouldin_score(normalised, labels), rel=1e-6)
    assert quality["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(normalised, labels), rel=1e-6)
    reference = MiniBatchKMeans(n_clusters=8, n_init=1).fit(normalised[:100])
    reference.cluster_centers_ = model.centroids.copy()
    assert quality["inertia_total"] == pytest.approx(-reference.score(normalised), rel=1e-4)
    assert quality["inertia_mean"] == pytest.approx(quality["inertia_total"] / len(held_out))
    counts = np.bincount(labels, minlength=8)
    assert quality["cluster_sizes"] == counts.tolist() and quality["n_empty_clusters"] == 0
    assert quality["majority_fraction"] == pytest.approx(counts.max() / len(held_out))
    subsampled = cluster_quality(model, held_out, max_rows=500)
    assert subsampled["n_rows_scored"] == 500 and subsampled["cluster_sizes"] == quality["cluster_sizes"]


def test_cluster_quality_counts_empty_clusters() -> None:
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    model = KMeansModel(centroids, FeatureNormaliser("none"))
    rows = np.array([[0.1, 0.0], [0.0, 0.2], [9.9, 0.1]])
    quality = cluster_quality(model, rows)
    assert quality["cluster_sizes"] == [2, 1, 0] and quality["n_empty_clusters"] == 1
    assert quality["majority_fraction"] == pytest.approx(2 / 3)
    assert quality["inertia_total"] == pytest.approx(0.01 + 0.04 + 0.02)


def test_sweep_k_inertia_falls_until_the_true_k(blobs) -> None:
    x, _ = blobs
    results = sweep_k(x, [2, 4, 8], normaliser="none", seed=0)
    assert [k for k, _, _ in results] == [2, 4, 8]
    assert [model.k for _, model, _ in results] == [2, 4, 8]
    inertia = [quality["inertia_mean"] for _, _, quality in results]
    assert inertia[0] > inertia[1] > inertia[2]
    with pytest.raises(KMeansInputError, match=r"^sweep_k needs held_out features when features is not an array$"):
        sweep_k(_chunks(x, 100), [2])


def test_real_descriptors_cluster_and_round_trip(tmp_path: Path) -> None:
    """Iteration-1 pipeline on real PTB-XL leads: descriptors -> streamed k-means -> file -> same labels."""
    wfdb = pytest.importorskip("wfdb")
    from hubert_ecg.pretraining.features import hand_features

    root = shared_path("ptbxl-unlabelled-100hz")
    names = [line.split(",")[1] for line in (root / "records.csv").read_text().splitlines()[1:13]]
    x = np.stack([wfdb.rdrecord(str(root / name)).p_signal[:500].T.reshape(-1) for name in names])
    features = hand_features(x, "tf+mfcc", 100.0)  # (12, 93, 29)
    model = fit_kmeans((features[i : i + 4] for i in range(0, 12, 4)), 10, normaliser="standardise+l2", batch_size=372)
    path = model.save(tmp_path / "it1.safetensors")
    labels = KMeansModel.load(path).assign(features)
    assert labels.shape == (12, 93)
    np.testing.assert_array_equal(labels, model.assign(features))
    quality = cluster_quality(model, features)
    assert quality["n_rows"] == 12 * 93 and sum(quality["cluster_sizes"]) == 12 * 93
    assert quality["majority_fraction"] < 0.5 and np.isfinite(quality["davies_bouldin"])


# ------------------------------------------------------------------ what each normaliser option is for
def _direction_clusters(rng: np.random.Generator, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """4 clusters that are directions; per-token magnitudes spread 100-fold (e.g. loud and quiet leads)."""
    truth = rng.integers(0, 4, size=n)
    x = (np.eye(4)[truth] + 0.1 * rng.standard_normal((n, 4))) * np.exp(rng.uniform(np.log(0.1), np.log(10), (n, 1)))
    return x.astype(np.float32), truth


def _affine_clusters(rng: np.random.Generator, n: int = 1500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 clusters in dims 0-2 plus an uninformative dim 3; and the same data after a per-feature affine map."""
    truth = rng.integers(0, 4, size=n)
    centres = 3.0 * np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)
    x = np.column_stack([centres[truth] + 0.3 * rng.standard_normal((n, 3)), rng.standard_normal(n)])
    scaled = x * np.array([0.001, 0.01, 1.0, 1000.0]) + np.array([50.0, -3.0, 7.0, 100.0])
    return x.astype(np.float32), scaled.astype(np.float32), truth


@pytest.mark.parametrize(
    "mode,invariant", [("l2", True), ("standardise", False), ("none", False), ("standardise+l2", False)]
)
def test_l2_alone_makes_labels_invariant_to_per_token_scale(
    rng: np.random.Generator, mode: str, invariant: bool
) -> None:
    x, truth = _direction_clusters(rng)
    model = fit_kmeans(x, 4, normaliser=mode, seed=0)
    rescaled = x * rng.uniform(0.05, 20.0, size=(len(x), 1)).astype(np.float32)
    same = np.mean(model.assign(rescaled) == model.assign(x))
    recovered = adjusted_rand_score(truth, model.assign(x))
    if invariant:
        assert same == 1.0 and recovered > 0.95
    else:  # magnitude, not direction, drives these clusters
        assert same < 0.8 and recovered < 0.6


@pytest.mark.parametrize(
    "mode,invariant", [("standardise", True), ("standardise+l2", True), ("l2", False), ("none", False)]
)
def test_standardising_makes_labels_invariant_to_per_feature_affine_maps(
    rng: np.random.Generator, mode: str, invariant: bool
) -> None:
    x, scaled, truth = _affine_clusters(rng)
    labels = fit_kmeans(x, 4, normaliser=mode, seed=0).assign(x)
    labels_scaled = fit_kmeans(scaled, 4, normaliser=mode, seed=0).assign(scaled)
    agreement = adjusted_rand_score(labels, labels_scaled)
    if invariant:
        assert agreement > 0.99 and adjusted_rand_score(truth, labels_scaled) > 0.9
    else:  # the 1000x uninformative dimension (or the offsets) decide the clusters after the map
        assert agreement < 0.5 and adjusted_rand_score(truth, labels_scaled) < 0.5


def test_standardise_then_l2_is_that_order(rng: np.random.Generator) -> None:
    """``standardise+l2`` = z-score with the fitted statistics, then unit rows (sklearn's scaler then Normalizer)."""
    from sklearn.preprocessing import StandardScaler

    x, scaled, _ = _affine_clusters(rng, 500)
    scaled = scaled.astype(np.float64)
    ours = FeatureNormaliser("standardise+l2").fit(scaled).transform(scaled)
    expected = Normalizer().transform(StandardScaler().fit(scaled).transform(scaled))
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    swapped = StandardScaler().fit_transform(Normalizer().transform(scaled))
    assert np.abs(ours - swapped).max() > 0.1
