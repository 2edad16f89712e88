"""k-means targets for HuBERT pre-training: fitting, safe storage, assignment and quality metrics.

A :class:`KMeansModel` bundles the centroids with the :class:`FeatureNormaliser` they were fitted in,
and :meth:`KMeansModel.assign` always applies that normaliser before the nearest-centroid search. The
reference fitted its k-means on L2-normalised features but labelled the raw ones; here the raw -> normalised
step lives inside the model, so fit and assignment cannot disagree.

Models are stored as one ``.safetensors`` file (centroids, normaliser statistics, JSON metadata in the
header); pickle/joblib files are refused on load, since unpickling runs arbitrary code.

Typical use::

    model = fit_kmeans(feature_chunks, k=100, normaliser="standardise+l2", seed=0)
    model.metadata.kind = "tf+mfcc"
    model.save("kmeans_it1.safetensors")
    labels = KMeansModel.load("kmeans_it1.safetensors").assign(features_btd)   # (B, T) int16
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: plain k-means on numpy does not need it
    import torch

__all__ = [
    "FeatureNormaliser",
    "KMeansFileError",
    "KMeansInputError",
    "KMeansMetadata",
    "KMeansModel",
    "NormaliserMode",
    "cluster_quality",
    "fit_kmeans",
    "sweep_k",
]

NormaliserMode = Literal["l2", "standardise", "standardise+l2", "none"]
FeatureSource = np.ndarray | Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]]

_NORMALISER_MODES: tuple[str, ...] = ("l2", "standardise", "standardise+l2", "none")
_FORMAT_NAME = "hubert-ecg-kmeans"
_FORMAT_VERSION = "1"
_DEFAULT_FILE_NAME = "kmeans.safetensors"


class KMeansInputError(ValueError):
    """Bad features or arguments given to fitting, assignment or scoring."""


class KMeansFileError(ValueError):
    """A k-means file that cannot be loaded (missing, not our safetensors format, or a refused pickle)."""


def _as_rows(features: object, name: str = "features") -> tuple[np.ndarray, tuple[int, ...]]:
    """Features ``(N, D)`` or ``(B, T, D)`` -> float32/float64 rows ``(N', D)`` and the leading shape."""
    if hasattr(features, "detach"):  # torch.Tensor, without importing torch
        features = features.detach().cpu().numpy()
    array = np.asarray(features)
    if array.ndim not in (2, 3):
        raise KMeansInputError(f"{name}: expected shape (N, D) or (B, T, D), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise KMeansInputError(f"{name}: expected real numbers, got dtype {array.dtype}")
    if array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    rows = array.reshape(-1, array.shape[-1])
    finite = np.isfinite(rows)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise KMeansInputError(f"{name}: row {bad} has non-finite values (NaN or inf)")
    return rows, array.shape[:-1]


@dataclass
class FeatureNormaliser:
    """Per-row feature transform shared by k-means fitting and label assignment.

    Modes:
        ``"l2"``: divide every row by its L2 norm (as the reference, ``sklearn.preprocessing.Normalizer``;
        all-zero rows stay zero).
        ``"standardise"``: per-dimension z-score with a mean and std fitted once (constant dimensions get
        std 1, so they become 0 instead of NaN).
        ``"standardise+l2"``: z-score, then row L2 normalisation.
        ``"none"``: identity.

    ``mean``/``std`` are float64 ``(D,)`` once fitted (standardising modes only).
    """

    mode: NormaliserMode = "l2"
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mode not in _NORMALISER_MODES:
            raise KMeansInputError(f"unknown normaliser mode {self.mode!r}; expected one of {_NORMALISER_MODES}")

    @property
    def standardises(self) -> bool:
        return self.mode in ("standardise", "standardise+l2")

    @property
    def is_fitted(self) -> bool:
        return not self.standardises or (self.mean is not None and self.std is not None)

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else int(self.mean.shape[0])

    def fit(self, features: object) -> FeatureNormaliser:
        """Fit the z-score statistics on ``(N, D)`` or ``(B, T, D)`` rows (no-op for l2/none). Returns self."""
        if self.standardises:
            rows, _ = _as_rows(features)
            if rows.shape[0] < 2:
                raise KMeansInputError(f"standardisation needs at least 2 rows to fit, got {rows.shape[0]}")
            rows64 = rows.astype(np.float64)
            mean = rows64.mean(axis=0)
            std = rows64.std(axis=0)
            # A constant dimension carries no information; std 1 maps it to 0 instead of dividing by 0.
            std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0
            self.mean, self.std = mean, std
        return self

    def transform(self, features: object) -> np.ndarray:
        """Normalised rows, same shape as ``features``; float32 unless the input is float64."""
        if not self.is_fitted:
            raise KMeansInputError(f"normaliser mode {self.mode!r} must be fitted before transform")
        rows, lead = _as_rows(features)
        if self.dim is not None and rows.shape[1] != self.dim:
            raise KMeansInputError(f"features have {rows.shape[1]} dimensions, the normaliser was fitted on {self.dim}")
        out = rows
        if self.standardises:
            assert self.mean is not None and self.std is not None
            out = ((rows - self.mean) / self.std).astype(rows.dtype, copy=False)
        if self.mode in ("l2", "standardise+l2"):
            norms = np.sqrt(np.einsum("nd,nd->n", out, out, dtype=np.float64))
            norms[norms == 0.0] = 1.0
            out = (out / norms[:, None]).astype(rows.dtype, copy=False)
        if out is rows:
            out = rows.copy()
        return out.reshape(*lead, rows.shape[1])

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Arrays to store alongside the centroids (empty for modes without fitted state)."""
        if not self.standardises or not self.is_fitted:
            return {}
        assert self.mean is not None and self.std is not None
        return {"normaliser.mean": self.mean.astype(np.float64), "normaliser.std": self.std.astype(np.float64)}


@dataclass
class KMeansMetadata:
    """Provenance stored with the centroids (all JSON-serialisable)."""

    kind: str | None = None  # "tf", "mfcc", "tf+mfcc" or "latent"
    layer: int | None = None  # transformer layer the latents were taken from (hidden_states index)
    source_checkpoint: str | None = None
    n_fit_rows: int = 0
    seed: int = 0
    backend: str = "sklearn"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class KMeansModel:
    """Fitted k-means targets: ``centroids`` float32 ``(K, D)`` in the normalised space of ``normaliser``."""

    centroids: np.ndarray
    normaliser: FeatureNormaliser
    metadata: KMeansMetadata = field(default_factory=KMeansMetadata)

    def __post_init__(self) -> None:
        centroids = np.asarray(self.centroids)
        if centroids.ndim != 2 or centroids.shape[0] < 1:
            raise KMeansInputError(f"centroids must have shape (K, D) with K >= 1, got {centroids.shape}")
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if self.normaliser.dim is not None and self.normaliser.dim != self.dim:
            raise KMeansInputError(
                f"normaliser was fitted on {self.normaliser.dim} dimensions, centroids have {self.dim}"
            )

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def label_dtype(self) -> type[np.integer]:
        return np.int16 if self.k <= np.iinfo(np.int16).max else np.int32

    @classmethod
    def from_sklearn(
        cls, estimator: Any, normaliser: FeatureNormaliser, metadata: KMeansMetadata | None = None
    ) -> KMeansModel:
        """Wrap a fitted sklearn (MiniBatch)KMeans; ``normaliser`` must be the transform it was fitted on.

        This is the way to convert a reference ``.pkl`` after unpickling it yourself from a trusted
        source (the reference fitted on ``FeatureNormaliser("l2")``).
        """
        return cls(np.asarray(estimator.cluster_centers_), normaliser, metadata or KMeansMetadata())

    # ---------------------------------------------------------------- assignment
    def assign(
        self,
        features: object,
        batch_size: int = 65536,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Nearest-centroid label of every row after applying the stored normaliser.

        Args:
            features: raw (un-normalised) ``(N, D)`` or ``(B, T, D)`` features, numpy or torch.
            batch_size: rows per distance computation (bounds memory at ``batch_size * K`` floats).
            device: ``None`` for numpy on CPU, else a torch device (``"cuda"``, ``"cpu"``) to compute on.

        Returns:
            labels ``(N,)`` or ``(B, T)``, int16 when ``K <= 32767`` else int32. Squared distances are
            ranked as ``|c|^2 - 2 x.c`` (the row norm is constant per row), as sklearn's ``predict`` does.
        """
        if batch_size < 1:
            raise KMeansInputError(f"batch_size must be >= 1, got {batch_size}")
        rows, lead = _as_rows(features)
        if rows.shape[1] != self.dim:
            raise KMeansInputError(f"features have {rows.shape[1]} dimensions, the k-means model has {self.dim}")
        labels = np.empty(rows.shape[0], dtype=self.label_dtype)
        if device is None:
            centroids = self.centroids.astype(rows.dtype, copy=False)
            centroid_sq = np.einsum("kd,kd->k", centroids, centroids)
            for start in range(0, rows.shape[0], batch_size):
                chunk = self.normaliser.transform(rows[start : start + batch_size])
                scores = centroid_sq[None, :] - 2.0 * (chunk @ centroids.T)
                labels[start : start + batch_size] = scores.argmin(axis=1)
        else:
            import torch

            torch_device = torch.device(device)
            dtype = torch.float64 if rows.dtype == np.float64 else torch.float32
            centroids_t = torch.as_tensor(self.centroids, device=torch_device, dtype=dtype)
            centroid_sq_t = (centroids_t * centroids_t).sum(dim=1)
            for start in range(0, rows.shape[0], batch_size):
                chunk = self.normaliser.transform(rows[start : start + batch_size])
                chunk_t = torch.as_tensor(chunk, device=torch_device, dtype=dtype)
                scores_t = centroid_sq_t[None, :] - 2.0 * (chunk_t @ centroids_t.T)
                labels[start : start + batch_size] = scores_t.argmin(dim=1).cpu().numpy()
        return labels.reshape(lead)

    # ---------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file; a directory (existing, or a path without suffix) gets ``kmeans.safetensors``.

        Returns the file written.
        """
        from safetensors.numpy import save_file

        target = Path(path)
        if target.is_dir() or target.suffix == "":
            target.mkdir(parents=True, exist_ok=True)
            target = target / _DEFAULT_FILE_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"centroids": self.centroids, **self.normaliser.state_tensors()}
        header = {
            "format": _FORMAT_NAME,
            "format_version": _FORMAT_VERSION,
            "normaliser_mode": self.normaliser.mode,
            "metadata": json.dumps(asdict(self.metadata), sort_keys=True),
        }
        save_file(tensors, str(target), metadata=header)
        return target

    @classmethod
    def load(cls, path: str | Path) -> KMeansModel:
        """Load a file written by :meth:`save` (or the directory holding ``kmeans.safetensors``).

        Raises:
            KMeansFileError: missing file, pickle/joblib file (refused), or not a hubert-ecg k-means file.
        """
        from safetensors import safe_open

        source = Path(path)
        if source.is_dir():
            source = source / _DEFAULT_FILE_NAME
        if not source.is_file():
            raise KMeansFileError(f"{source}: k-means file not found")
        try:
            with safe_open(str(source), framework="numpy") as reader:
                header = reader.metadata() or {}
                tensors = {name: reader.get_tensor(name) for name in reader.keys()}
        except Exception as error:  # safetensors raises its own error types for malformed files
            if _looks_like_pickle(source):
                raise KMeansFileError(
                    f"{source}: pickle/joblib k-means files are refused (unpickling runs arbitrary code); unpickle "
                    "a trusted file yourself and convert it with KMeansModel.from_sklearn(...).save(...)"
                ) from None
            raise KMeansFileError(f"{source}: not a safetensors file ({error})") from None
        if header.get("format") != _FORMAT_NAME or "centroids" not in tensors:
            raise KMeansFileError(f"{source}: safetensors file without hubert-ecg k-means centroids")
        if header.get("format_version") != _FORMAT_VERSION:
            raise KMeansFileError(f"{source}: unsupported k-means format version {header.get('format_version')!r}")
        try:
            meta = KMeansMetadata(**json.loads(header.get("metadata", "{}")))
            normaliser = FeatureNormaliser(
                header.get("normaliser_mode", "none"),
                tensors.get("normaliser.mean"),
                tensors.get("normaliser.std"),
            )
        except (TypeError, ValueError) as error:
            raise KMeansFileError(f"{source}: malformed k-means metadata ({error})") from None
        if not normaliser.is_fitted:
            raise KMeansFileError(f"{source}: normaliser {normaliser.mode!r} has no stored mean/std")
        return cls(tensors["centroids"], normaliser, meta)


def _looks_like_pickle(path: Path) -> bool:
    """Pickle protocol 2+ opens with 0x80 <protocol>; joblib's zlib-compressed dumps with 0x78."""
    with path.open("rb") as handle:
        head = handle.read(2)
    is_pickle = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    is_zlib = len(head) == 2 and head[0] == 0x78 and head[1] in (0x01, 0x5E, 0x9C, 0xDA)
    return is_pickle or is_zlib or path.suffix in (".pkl", ".pickle", ".joblib")


# -------------------------------------------------------------------- fitting
def _open_source(source: FeatureSource, epoch: int) -> Iterator[np.ndarray]:
    """Fresh iterator over 2-D float chunks for one pass; single-use iterators only allow epoch 0."""
    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        return iter([_as_rows(source)[0]])
    if callable(source):
        return iter(source())
    if epoch > 0 and iter(source) is source:
        raise KMeansInputError(
            "several epochs need a re-iterable feature source (array, list, or a function returning an iterator)"
        )
    return iter(source)


def _checked_chunks(chunks: Iterator[np.ndarray], dim: list[int]) -> Iterator[np.ndarray]:
    """Validate each chunk, flatten (B, T, D) to rows and enforce one feature width across the stream."""
    for index, chunk in enumerate(chunks):
        rows, _ = _as_rows(chunk, name=f"feature chunk {index}")
        if not dim:
            dim.append(rows.shape[1])
        elif rows.shape[1] != dim[0]:
            raise KMeansInputError(f"feature chunk {index}: {rows.shape[1]} dimensions, earlier chunks had {dim[0]}")
        if rows.shape[0]:
            yield rows


def _rebatch(chunks: Iterable[np.ndarray], batch_size: int, first_size: int) -> Iterator[np.ndarray]:
    """Regroup arbitrary chunks into batches of ``batch_size`` rows (the first one ``first_size``)."""
    pending: list[np.ndarray] = []
    n_pending = 0
    target = first_size
    for chunk in chunks:
        pending.append(chunk)
        n_pending += chunk.shape[0]
        while n_pending >= target:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:target]
            rest = joined[target:]
            pending, n_pending = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
            target = batch_size
    if n_pending:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def _fit_normaliser_from_head(
    normaliser: FeatureNormaliser, chunks: Iterator[np.ndarray], n_rows: int
) -> Iterator[np.ndarray]:
    """Fit ``normaliser`` on the first ``n_rows`` rows (at least one chunk) and return the full stream."""
    head: list[np.ndarray] = []
    seen = 0
    for chunk in chunks:
        head.append(chunk)
        seen += chunk.shape[0]
        if seen >= n_rows:
            break
    if not head:
        raise KMeansInputError("no feature rows to fit the normaliser on: the feature source is empty")
    normaliser.fit(np.concatenate(head))
    return chain(head, chunks)


def fit_kmeans(
    feature_batches: FeatureSource,
    k: int,
    *,
    normaliser: NormaliserMode | FeatureNormaliser = "l2",
    normaliser_sample: np.ndarray | None = None,
    normaliser_rows: int = 100_000,
    seed: int = 0,
    backend: Literal["sklearn", "faiss"] = "sklearn",
    batch_size: int = 10_000,
    epochs: int | None = None,
    max_rows: int | None = None,
    faiss_gpu: bool = False,
    n_threads: int | None = None,
    metadata: KMeansMetadata | None = None,
) -> KMeansModel:
    """Fit k-means on per-token features, streaming if needed.

    Args:
        feature_batches: one array ``(N, D)``/``(B, T, D)``, or an iterable of such chunks (features never
            need to fit in memory), or a function returning a fresh iterable (needed for ``epochs > 1``).
        k: number of clusters.
        normaliser: mode name or a ready :class:`FeatureNormaliser`; an unfitted standardising one is fitted on
            ``normaliser_sample`` if given, else on the first chunks of the stream (>= ``normaliser_rows`` rows).
        seed: random seed (k-means++ init, mini-batch reassignment, faiss sampling).
        backend: ``"sklearn"`` (MiniBatchKMeans, k-means++) or ``"faiss"`` (imported lazily; materialises at
            most ``max_rows`` rows, on GPU with ``faiss_gpu``).
        batch_size: rows per mini-batch; the first streamed batch has at least ``3 k`` rows so that k-means++
            initialisation sees enough data.
        epochs: passes over the data. Array input with sklearn: ``MiniBatchKMeans.fit`` max_iter (default 100,
            with early stopping); streamed input: partial_fit passes (default 1); faiss: iterations (default 25).
        max_rows: stop reading a stream after this many rows (per epoch).
        n_threads: cap on OpenMP/BLAS threads while fitting (``None``: library defaults). On small or
            oversubscribed CPUs, 1 can be 10x faster, since sklearn's OpenMP workers spin-wait for each other.
        metadata: provenance to store; ``n_fit_rows``, ``seed`` and ``backend`` are filled in here.

    Returns:
        the fitted :class:`KMeansModel` (its normaliser is the one every row was transformed with).
    """
    opts = KMeansOptions(int(k), normaliser_rows, int(seed), backend, batch_size, epochs, max_rows, faiss_gpu)
    opts.check()
    norm = normaliser if isinstance(normaliser, FeatureNormaliser) else FeatureNormaliser(normaliser)
    if not norm.is_fitted and normaliser_sample is not None:
        norm.fit(normaliser_sample)
    # A copy, so that sweep_k (or a caller reusing one metadata object) never shares it between models.
    meta = replace(metadata, extra=dict(metadata.extra)) if metadata is not None else KMeansMetadata()
    meta.seed, meta.backend = opts.seed, opts.backend
    stream = _EpochRows(feature_batches, norm, opts)
    in_memory = isinstance(feature_batches, np.ndarray) or hasattr(feature_batches, "detach")
    with _thread_limit(n_threads):
        if opts.backend == "faiss":
            return _fit_faiss(stream, norm, opts, meta)
        if in_memory and max_rows is None:
            return _fit_sklearn_in_memory(stream, norm, opts, meta)
        return _fit_sklearn_streaming(stream, norm, opts, meta)


@dataclass(frozen=True)
class KMeansOptions:
    """How :func:`fit_kmeans` fits (its keyword arguments other than the data, normaliser and provenance)."""

    k: int
    normaliser_rows: int = 100_000
    seed: int = 0
    backend: str = "sklearn"
    batch_size: int = 10_000
    epochs: int | None = None
    max_rows: int | None = None
    faiss_gpu: bool = False

    def check(self) -> None:
        if self.k < 1:
            raise KMeansInputError(f"k must be >= 1, got {self.k}")
        if self.batch_size < 1:
            raise KMeansInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs is not None and self.epochs < 1:
            raise KMeansInputError(f"epochs must be >= 1, got {self.epochs}")
        if self.backend not in ("sklearn", "faiss"):
            raise KMeansInputError(f"unknown k-means backend {self.backend!r}; expected 'sklearn' or 'faiss'")


class _EpochRows:
    """Checked 2-D row chunks of one pass over the source; the normaliser is fitted on the first pass's head."""

    def __init__(self, source: FeatureSource, norm: FeatureNormaliser, opts: KMeansOptions) -> None:
        self.source, self.norm, self.opts = source, norm, opts
        self.dim: list[int] = []

    def __call__(self, epoch: int) -> Iterator[np.ndarray]:
        stream = _checked_chunks(_open_source(self.source, epoch), self.dim)
        if not self.norm.is_fitted:
            stream = _fit_normaliser_from_head(self.norm, stream, self.opts.normaliser_rows)
        return _limit_rows(stream, self.opts.max_rows) if self.opts.max_rows is not None else stream


def _thread_limit(n_threads: int | None) -> Any:
    """A cap on OpenMP/BLAS threads while fitting, or nothing (``None``: library defaults)."""
    if n_threads is None:
        import contextlib

        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    return threadpool_limits(limits=n_threads)


def _fit_faiss(stream: _EpochRows, norm: FeatureNormaliser, opts: KMeansOptions, meta: KMeansMetadata) -> KMeansModel:
    faiss = _import_faiss()
    chunks = list(stream(0))
    if not chunks:
        raise KMeansInputError("no feature rows to fit k-means on: the feature source is empty")
    data = np.ascontiguousarray(norm.transform(np.concatenate(chunks)), dtype=np.float32)
    _check_enough_rows(data.shape[0], opts.k)
    km = faiss.Kmeans(data.shape[1], opts.k, niter=opts.epochs or 25, seed=opts.seed, gpu=opts.faiss_gpu, verbose=False)
    km.train(data)
    meta.n_fit_rows = int(data.shape[0])
    return KMeansModel(np.asarray(km.centroids), norm, meta)


def _fit_sklearn_in_memory(
    stream: _EpochRows, norm: FeatureNormaliser, opts: KMeansOptions, meta: KMeansMetadata
) -> KMeansModel:
    """One array: ``MiniBatchKMeans.fit`` with ``epochs`` as max_iter (default 100, early stopping)."""
    from sklearn.cluster import MiniBatchKMeans

    chunks = list(stream(0))
    if not chunks:
        raise KMeansInputError("no feature rows to fit k-means on: the feature array is empty")
    data = norm.transform(chunks[0]).astype(np.float32, copy=False)
    _check_enough_rows(data.shape[0], opts.k)
    max_iter = opts.epochs or 100
    fit_batch = min(opts.batch_size, data.shape[0])
    if max_iter * data.shape[0] // fit_batch < 2:
        # sklearn's MiniBatchKMeans.fit fails after a single step (no running inertia yet): use two.
        fit_batch = max(1, data.shape[0] // 2)
    estimator = MiniBatchKMeans(
        n_clusters=opts.k,
        init="k-means++",
        batch_size=fit_batch,
        max_iter=max_iter,
        random_state=opts.seed,
        compute_labels=False,
        n_init=1,
    ).fit(data)
    meta.n_fit_rows = int(data.shape[0])
    return KMeansModel(estimator.cluster_centers_, norm, meta)


def _fit_sklearn_streaming(
    stream: _EpochRows, norm: FeatureNormaliser, opts: KMeansOptions, meta: KMeansMetadata
) -> KMeansModel:
    """A stream: ``partial_fit`` passes (``epochs``, default 1); the first batch has >= 3 k rows for k-means++."""
    from sklearn.cluster import MiniBatchKMeans

    estimator = MiniBatchKMeans(
        n_clusters=opts.k,
        init="k-means++",
        batch_size=opts.batch_size,
        random_state=opts.seed,
        compute_labels=False,
        n_init=1,
    )
    n_rows_first_epoch = 0
    for epoch in range(opts.epochs or 1):
        for batch in _rebatch(stream(epoch), opts.batch_size, first_size=max(opts.batch_size, 3 * opts.k)):
            if epoch == 0:
                n_rows_first_epoch += batch.shape[0]
                if not hasattr(estimator, "cluster_centers_"):
                    _check_enough_rows(batch.shape[0], opts.k)
            estimator.partial_fit(norm.transform(batch).astype(np.float32, copy=False))
    if not hasattr(estimator, "cluster_centers_"):
        raise KMeansInputError("no feature rows to fit k-means on: the feature source is empty")
    meta.n_fit_rows = n_rows_first_epoch
    return KMeansModel(estimator.cluster_centers_, norm, meta)


def _limit_rows(chunks: Iterator[np.ndarray], max_rows: int) -> Iterator[np.ndarray]:
    remaining = max_rows
    for chunk in chunks:
        if remaining <= 0:
            return
        yield chunk[:remaining]
        remaining -= chunk.shape[0]


def _check_enough_rows(n_rows: int, k: int) -> None:
    if n_rows < k:
        raise KMeansInputError(f"k-means with k={k} needs at least {k} rows in the first batch, got {n_rows}")


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise KMeansInputError(
            "backend='faiss' needs the faiss package: pip install faiss-cpu (or faiss-gpu), or use backend='sklearn'"
        ) from None
    return faiss


# -------------------------------------------------------------------- quality
def cluster_quality(
    model: KMeansModel,
    held_out_features: object,
    *,
    max_rows: int = 20_000,
    seed: int = 0,
    batch_size: int = 65536,
) -> dict[str, Any]:
    """Quality of ``model`` on held-out raw features ``(N, D)`` or ``(B, T, D)``.

    Returns a dict with:
        ``n_rows``; ``inertia_total`` and ``inertia_mean`` (sum / mean squared distance to the assigned
        centroid over all rows, in the normalised space); ``davies_bouldin`` and ``calinski_harabasz``
        (sklearn, on a random subsample of at most ``max_rows`` normalised rows with the model's labels; NaN
        when that subsample holds fewer than 2 clusters); ``n_rows_scored``; ``cluster_sizes`` (list of K
        counts over all rows); ``n_empty_clusters``; ``majority_fraction`` (share of rows in the largest
        cluster: the accuracy of always predicting it).
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    rows, _ = _as_rows(held_out_features, name="held_out_features")
    if rows.shape[0] == 0:
        raise KMeansInputError("held_out_features: no rows to score")
    labels = model.assign(rows, batch_size=batch_size).astype(np.int64)
    total = 0.0
    for start in range(0, rows.shape[0], batch_size):
        chunk = model.normaliser.transform(rows[start : start + batch_size]).astype(np.float64)
        diff = chunk - model.centroids[labels[start : start + batch_size]].astype(np.float64)
        total += float(np.einsum("nd,nd->", diff, diff))
    sizes = np.bincount(labels, minlength=model.k)

    if rows.shape[0] > max_rows:
        picked = np.sort(np.random.default_rng(seed).choice(rows.shape[0], size=max_rows, replace=False))
    else:
        picked = np.arange(rows.shape[0])
    sub_labels = labels[picked]
    if np.unique(sub_labels).size >= 2 and np.unique(sub_labels).size < picked.size:
        sub_rows = model.normaliser.transform(rows[picked])
        davies_bouldin = float(davies_bouldin_score(sub_rows, sub_labels))
        calinski_harabasz = float(calinski_harabasz_score(sub_rows, sub_labels))
    else:
        davies_bouldin = calinski_harabasz = math.nan
    return {
        "n_rows": int(rows.shape[0]),
        "inertia_total": total,
        "inertia_mean": total / rows.shape[0],
        "davies_bouldin": davies_bouldin,
        "calinski_harabasz": calinski_harabasz,
        "n_rows_scored": int(picked.size),
        "cluster_sizes": sizes.tolist(),
        "n_empty_clusters": int((sizes == 0).sum()),
        "majority_fraction": float(sizes.max() / rows.shape[0]),
    }


def sweep_k(
    features: FeatureSource,
    ks: Sequence[int],
    *,
    held_out: object | None = None,
    quality_max_rows: int = 20_000,
    **fit_kwargs: Any,
) -> list[tuple[int, KMeansModel, dict[str, Any]]]:
    """Fit one model per K (same data, seed and normaliser mode) for inertia-vs-K / elbow plots.

    ``features`` must be re-iterable (array, list or function returning an iterator) since it is read once
    per K. Quality is measured on ``held_out`` (an array), or on ``features`` itself when it is an array.
    Returns ``[(k, model, cluster_quality(...)), ...]`` in the order of ``ks``.
    """
    if held_out is None:
        if not (isinstance(features, np.ndarray) or hasattr(features, "detach")):
            raise KMeansInputError("sweep_k needs held_out features when features is not an array")
        held_out = features
    reiterable = isinstance(features, np.ndarray) or callable(features) or iter(features) is not features
    if not reiterable:
        raise KMeansInputError("sweep_k reads the features once per K: pass an array, a list or a function")
    results = []
    for k in ks:
        normaliser = fit_kwargs.get("normaliser", "l2")
        kwargs = dict(fit_kwargs)
        # Each K gets its own normaliser object so later fits never mutate an earlier model's state.
        if isinstance(normaliser, FeatureNormaliser):
            kwargs["normaliser"] = FeatureNormaliser(normaliser.mode, normaliser.mean, normaliser.std)
        model = fit_kmeans(features, int(k), **kwargs)
        results.append((int(k), model, cluster_quality(model, held_out, max_rows=quality_max_rows)))
    return results
