"""Store-level stages of pre-training targets: dump per-token features, cluster them, label the store.

The HuBERT loop over a prepared store (:mod:`hubert_ecg.store`)::

    dump_features(store, FEATS, kind="tf+mfcc")               # a (sampled) set of per-token descriptors
    cluster_features(FEATS, [100], KM)                         # KM/k100/kmeans.safetensors + quality.json
    label_store(store, [KM / "k100"], "it1")                   # STORE/targets/it1.npy, int16 (rows, T)
    ... pre-train on store.targets("it1"), then:
    dump_features(store, FEATS2, kind="hidden", checkpoint=RUN, layer=6)
    cluster_features(FEATS2, [500], KM2); label_store(store, [KM2 / "k500"], "it2")

What a token's descriptor is
----------------------------
The model input of a row is its *first* 5 s window, flattened to ``(12 * window,)`` (6000 samples at
100 Hz) with a sample mask, exactly as :class:`~hubert_ecg.loader.StoreWindows` with ``crop="first"``
delivers it to pre-training (the same code makes both). Descriptor ``t`` is computed from token ``t``'s
own receptive field (:func:`hubert_ecg.pretraining.features.token_spans`), so target ``t`` belongs to token ``t``.

* ``"tf"``, ``"mfcc"``, ``"tf+mfcc"``: :func:`hubert_ecg.pretraining.features.hand_features` with the conv layout
  of the store's rate (16, 13 (39 with ``mfcc_deltas``), 29 values).
* ``"hidden"``: ``hidden_states[layer]`` of a checkpoint, numbered as
  :class:`~hubert_ecg.model.HubertECG` numbers them: 0 = encoder input (projected conv features after
  the positional convolution and LayerNorm), ``i`` = output of transformer layer ``i`` (1-based), so
  ``layer = num_hidden_layers`` is the last hidden state. Runs in eval mode under
  ``torch.inference_mode`` (bf16 autocast on CUDA); the attention mask is passed whenever a row is
  padded, so padded tokens never influence real ones. Layers above ``layer`` are not run.

A token is *valid* when its whole receptive field is real signal (the model's token-mask rule). Short
records have invalid tokens at the end of every lead; they are stored with a ``valid`` flag and left
out of k-means fitting. In the target arrays they still get the label of their (zero-padded)
descriptor, so every id lies in ``[0, K)``; the pre-training loss ignores them through the token mask.

Files
-----
``FEATS/``::

    features-r{rank}-{i:05d}.npy        float32|float16 (n, T, F) descriptors of shard i of rank `rank`
    features-r{rank}-{i:05d}.rows.npy   int64 (n,) store rows of those descriptors
    features-r{rank}-{i:05d}.valid.npy  bool (n, T) token validity (whole receptive field real)
    plan.json                           the dump's settings (checked on resume)
    features.json                       plan + shard list + n_rows + "complete": true, when all exist

``KM/``: ``k{K}/kmeans.safetensors``, ``k{K}/quality.json``, ``sweep.json``, ``inertia_vs_k.png``,
``held_out_rows.npy`` (int64 store rows kept out of fitting and used for quality).

``STORE/targets/``: ``{name}.npy`` int16 ``(n_rows, T)`` and ``{name}.json`` (k-means path, its
sha256, K, feature kind/layer/checkpoint and spec, row count, the store's manifest sha256), one pair
per k-means model (``{name}-{i}`` for several).

What is refused rather than reused
----------------------------------
A descriptor is its kind, rate, window, layer and, for hidden states, the sha256 of the checkpoint's
weights (:class:`FeatureSpec`): a run folder retrained in place keeps its path, not its weights. So a
feature dump resumed after the checkpoint or the store changed is refused (its plan records both); a
K whose dump was re-made is refitted; labelling replays the k-means model's own descriptor and refuses
a kind/layer/checkpoint that gives another one; finished targets are refused as stale when the store
gained or changed rows (row count and manifest checksum in ``{name}.json``), when their descriptor
changed, or when the file is damaged.

Resuming and ranks
------------------
Every stage can be killed and re-run with the same arguments. Feature shards are written atomically
(rows and validity first, descriptors last: the descriptor file marks a shard done). Labels go into a
preallocated ``{name}.npy.partial`` memmap (a valid ``.npy`` file); after each block of rows the
memmap is flushed and then the rank's ``{name}.progress-r{rank}.json`` (completed block ranges) is
replaced atomically, so a block is only recorded once its labels are on disk. The partial file is
renamed to ``{name}.npy`` when every block is recorded.

With ``world_size`` ranks, features are split in contiguous blocks of the selected rows (rank r takes
the r-th of ``world_size`` near-equal parts), and label blocks likewise (rank r owns the r-th
contiguous range of blocks) and all ranks write into the *same* memmap, which the first rank to
arrive creates (an atomic no-replace link, so it is never created twice). Finishing (``features.json``,
the rename of the targets) is done by rank 0 after a barrier when ``torch.distributed`` is
initialised; otherwise by whichever rank finds every part done (ranks can then run one after the
other, or as independent jobs). Several ranks sharing one memmap need one file system seen by all of
them (one machine, or a shared file system with coherent writes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import atomic_path, atomic_write_json, sha256_file
from ..config import token_mask_from_sample_mask
from ..progress import progress
from ..shards import BlockJob, rank_share
from ..store import ECGStore

__all__ = [
    "FeatureSpec",
    "LabelInterrupted",
    "TargetsError",
    "cluster_features",
    "dump_features",
    "iter_feature_batches",
    "label_store",
]

FeatureKind = Literal["tf", "mfcc", "tf+mfcc", "hidden"]
_HAND_KINDS = ("tf", "mfcc", "tf+mfcc")
_KINDS = _HAND_KINDS + ("hidden",)
_FEATURES_FORMAT = "hubert-ecg-features"
_TARGETS_FORMAT = "hubert-ecg-targets"
_IN_MEMORY = "<in-memory model>"
# Keys that plans and settings gained later: a file written before them cannot be checked on them.
_ADDED_KEYS = frozenset(
    {"checkpoint_sha256", "store_manifest_sha256", "feature_spec", "features_store_manifest_sha256"}
)
_ITER_ECGS = 512  # ECG rows per chunk streamed to k-means (512 x 93 x 768 float32 = 146 MB at most)


class TargetsError(ValueError):
    """Bad arguments or on-disk state for feature dumping, clustering or labelling (one line, names the file)."""


class LabelInterrupted(TargetsError):
    """Raised when a stage stopped early on request (``stop_after_*``); re-running the same call finishes it."""


# ---------------------------------------------------------------------------------------------
# What a descriptor is
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """Everything that defines the per-token descriptor, as plain JSON-able data.

    ``fs``/``window`` (samples per lead) come from the store; ``checkpoint``/``layer`` only for
    ``kind="hidden"``; ``mfcc_deltas`` only for the MFCC kinds.
    """

    kind: str
    fs: float
    window: int
    layer: int | None = None
    checkpoint: str | None = None
    mfcc_deltas: bool = False
    # The checkpoint's weights, not its path: a run folder retrained in place keeps its path but
    # its hidden states (and every descriptor, k-means model and target built from them) change.
    checkpoint_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        missing = [k for k in ("kind", "fs", "window") if data.get(k) is None]
        if missing:
            raise TargetsError(f"feature spec is missing {', '.join(missing)}")
        return cls(
            kind=data["kind"],
            fs=data["fs"],
            window=data["window"],
            layer=data.get("layer"),
            checkpoint=data.get("checkpoint"),
            mfcc_deltas=bool(data.get("mfcc_deltas", False)),
            checkpoint_sha256=data.get("checkpoint_sha256"),
        )

    def differences(self, other: FeatureSpec) -> list[str]:
        """The fields that make ``other`` a different descriptor than this one (empty: the same).

        The checkpoint is compared by the sha256 of its weights when both sides know it (a moved
        folder is the same model), else by its recorded path; an in-memory model is not comparable.
        """
        diffs = [
            name
            for name in ("kind", "fs", "window", "layer", "mfcc_deltas")
            if getattr(self, name) != getattr(other, name)
        ]
        if self.checkpoint_sha256 and other.checkpoint_sha256:
            if self.checkpoint_sha256 != other.checkpoint_sha256:
                diffs.append("checkpoint (weights sha256)")
        elif (
            self.checkpoint is not None
            and other.checkpoint is not None
            and _IN_MEMORY not in (self.checkpoint, other.checkpoint)
            and self.checkpoint != other.checkpoint
        ):
            diffs.append("checkpoint")
        return diffs


def _checkpoint_string(checkpoint: Any) -> str | None:
    """How a checkpoint is recorded: absolute local path, hub id as given, or a note for in-memory models."""
    if checkpoint is None:
        return None
    if hasattr(checkpoint, "config") and hasattr(checkpoint, "encoder"):
        return _IN_MEMORY
    path = Path(str(checkpoint)).expanduser()
    return str(path.resolve()) if path.exists() else str(checkpoint)


def _checkpoint_sha256(checkpoint: Any) -> str | None:
    """sha256 of a checkpoint's weights file (None for an in-memory model or a hub id not on disk)."""
    reference = _checkpoint_string(checkpoint)
    if reference is None or reference == _IN_MEMORY:
        return None
    from ..runs import checkpoint_fingerprint

    printed = checkpoint_fingerprint(reference)
    return None if printed is None else printed.get("sha256")


def _make_spec(store: ECGStore, kind: str, checkpoint: Any, layer: int | None, mfcc_deltas: bool) -> FeatureSpec:
    if kind not in _KINDS:
        raise TargetsError(f"unknown feature kind {kind!r}; expected one of {', '.join(_KINDS)}")
    window = int(round(store.spec.window_s * store.fs))
    if kind == "hidden":
        if checkpoint is None or layer is None:
            raise TargetsError("kind 'hidden' needs a checkpoint and a layer (hidden_states index, 0 = encoder input)")
        return FeatureSpec(
            "hidden",
            float(store.fs),
            window,
            int(layer),
            _checkpoint_string(checkpoint),
            checkpoint_sha256=_checkpoint_sha256(checkpoint),
        )
    if checkpoint is not None or layer is not None:
        # Silently dropped, they would leave the user believing the descriptors came from that model.
        raise TargetsError(f"kind {kind!r} is computed from the signal: it takes no checkpoint or layer")
    return FeatureSpec(kind, float(store.fs), window, None, None, bool(mfcc_deltas) and "mfcc" in kind)


class _FeatureComputer:
    """Computes ``(features (B, T, F) float32, valid (B, T) bool)`` for store rows, first window only."""

    def __init__(self, store: ECGStore, spec: FeatureSpec, checkpoint: Any = None, device: str = "cpu") -> None:
        from ..loader import StoreWindows
        from .features import conv_layout, hand_feature_dim, token_spans

        self.store, self.spec = store, spec
        # The exact batches pre-training sees (same crop, padding and mask code).
        self.windows = StoreWindows(store, window=spec.window, crop="first")
        self.model = None
        if spec.kind == "hidden":
            import torch

            self.device = torch.device(device)
            self.model = self._load_model(checkpoint if checkpoint is not None else spec.checkpoint)
            config = self.model.config
            if float(config.input_rate_hz) != float(store.fs):
                raise TargetsError(
                    f"{spec.checkpoint}: the model takes {config.input_rate_hz} Hz input but the "
                    f"store {store.path} holds {store.fs:g} Hz rows"
                )
            _check_preprocessing(self.model, store, spec.checkpoint)
            self.kernels, self.strides = tuple(config.conv_kernel), tuple(config.conv_stride)
            self.dim = int(config.hidden_size)
        else:
            self.kernels, self.strides = conv_layout(spec.fs)
            self.dim = hand_feature_dim(spec.kind, mfcc_deltas=spec.mfcc_deltas)  # type: ignore[arg-type]
        self.spans = token_spans(12 * spec.window, self.kernels, self.strides)
        self.n_tokens = int(self.spans.shape[0])

    def _load_model(self, checkpoint: Any) -> Any:
        from ..model import HubertECG

        layer = int(self.spec.layer)  # type: ignore[arg-type]
        if isinstance(checkpoint, HubertECG):
            model = checkpoint  # the caller's model: used as it is, never truncated
        else:
            from ..checkpoint import load_model

            model = load_model(checkpoint)
        n_layers = model.config.num_hidden_layers
        if not 0 <= layer <= n_layers:
            raise TargetsError(
                f"{self.spec.checkpoint}: layer {layer} does not exist (0 = encoder input, "
                f"1..{n_layers} = transformer layers)"
            )
        if model is not checkpoint:
            # hidden_states[layer] never depends on later layers or heads: do not run them.
            model.encoder.layers = model.encoder.layers[:layer]
            model.classifier = None
        return model.to(self.device).eval()

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors and token validity of the first window of ``rows``: (B, T, F) float32, (B, T) bool."""
        from ..loader import batch_mask

        rows = np.asarray(rows, dtype=np.int64)
        item = self.windows[(0, rows)]
        sample_mask = batch_mask(item).numpy()
        valid = token_mask_from_sample_mask(sample_mask, self.kernels, self.strides)
        if self.model is None:
            from .features import FeatureInputError, hand_features

            try:
                feats = hand_features(
                    item["input"].numpy(),
                    self.spec.kind,  # type: ignore[arg-type]  # FeatureSpec.from_dict checked the kind
                    self.spec.fs,
                    mfcc_deltas=self.spec.mfcc_deltas,
                    conv_kernels=self.kernels,
                    conv_strides=self.strides,
                )
            except FeatureInputError as err:  # its row index is within the batch: name the store rows
                raise TargetsError(f"{self.store.path}, rows {rows[0]}..{rows[-1]}: {err}") from None
        else:
            feats = self._hidden(item["input"], item["attention_mask"], bool(item["full"]))
        if feats.shape[1] != self.n_tokens:
            raise TargetsError(f"{self.store.path}: descriptors have {feats.shape[1]} tokens, expected {self.n_tokens}")
        return feats, valid

    def _hidden(self, x: Any, mask: Any, full: bool) -> np.ndarray:
        import contextlib

        import torch

        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model(
                x.to(self.device),
                None if full else mask.to(self.device),  # type: ignore[misc]
                output_hidden_states=True,
            )
        return out.hidden_states[int(self.spec.layer)].float().cpu().numpy()  # type: ignore[arg-type]


def _check_preprocessing(model: Any, store: ECGStore, checkpoint: str | None) -> None:
    """Refuse hidden states of rows prepared otherwise than the model's pre-training store.

    The model only ever saw inputs of its recorded preprocessing (filters, scaling, lead order ...):
    on other inputs its hidden states describe a distribution shift, not the ECG, and the next
    iteration's targets would be built on them. A model without a record (fresh, or older) is not checked.
    """
    info = getattr(model, "info", None)
    expected = getattr(info, "preprocessing", None)
    if not expected:
        return
    from ..preprocess import PreprocessError, PreprocessSpec

    actual = store.spec.to_dict()
    try:  # a record from before a field was added takes that field's default (the old behaviour)
        expected = PreprocessSpec.from_dict(dict(expected)).to_dict()
    except (PreprocessError, TypeError, ValueError):
        expected = dict(expected)
    diffs = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if diffs:
        raise TargetsError(
            f"{store.path}: prepared with another preprocessing than the model {checkpoint} was trained on "
            f"(differs in: {', '.join(diffs)}); prepare the store with the model's spec"
        )


def _dist_ready(world_size: int) -> bool:
    """True when torch.distributed is running with these ranks (then a barrier orders the finish)."""
    if world_size <= 1:
        return False
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise TargetsError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")


# ---------------------------------------------------------------------------------------------
# 1. Dump features
# ---------------------------------------------------------------------------------------------
def _select_rows(store: ECGStore, rows: Sequence[int] | np.ndarray | None, fraction: float, seed: int) -> np.ndarray:
    selected = np.arange(len(store), dtype=np.int64) if rows is None else np.unique(np.asarray(rows, np.int64))
    if selected.size and (selected[0] < 0 or selected[-1] >= len(store)):
        bad = selected[0] if selected[0] < 0 else selected[-1]
        raise TargetsError(f"{store.path}: row {bad} does not exist (the store has {len(store)} rows)")
    if not 0.0 < fraction <= 1.0:
        raise TargetsError(f"sample_fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0:
        n = max(1, int(round(fraction * selected.size)))
        selected = np.sort(np.random.default_rng(seed).choice(selected, size=n, replace=False))
    if selected.size == 0:
        raise TargetsError(f"{store.path}: no rows selected for feature dumping")
    return selected


def _shard_name(rank: int, index: int) -> str:
    return f"features-r{rank}-{index:05d}"


def _rank_shards(selected: np.ndarray, world_size: int, shard_rows: int) -> list[list[tuple[str, np.ndarray]]]:
    """Per rank: [(shard name, store rows)], rank r taking the r-th contiguous part of ``selected``."""
    plan = []
    for r in range(world_size):
        part = rank_share(selected, r, world_size)
        plan.append(
            [(_shard_name(r, i), part[s : s + shard_rows]) for i, s in enumerate(range(0, len(part), shard_rows))]
        )
    return plan


def _shard_done(out_dir: Path, name: str) -> bool:
    return all((out_dir / f"{name}{suffix}").exists() for suffix in (".rows.npy", ".valid.npy", ".npy"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def dump_features(
    store: ECGStore,
    out_dir: str | os.PathLike,
    *,
    kind: FeatureKind,
    checkpoint: Any = None,
    layer: int | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
    sample_fraction: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    shard_rows: int = 4096,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    progress: bool = True,
    dtype: str = "float32",
    mfcc_deltas: bool = False,
    stop_after_shards: int | None = None,
) -> Path:
    """Write per-token descriptors of the first window of the selected rows, in resumable shards.

    Args:
        store: an open :class:`~hubert_ecg.store.ECGStore`.
        out_dir: feature directory (created); layout in the module docstring.
        kind: ``"tf"``, ``"mfcc"``, ``"tf+mfcc"`` or ``"hidden"`` (needs ``checkpoint`` and ``layer``).
        checkpoint: anything :func:`~hubert_ecg.checkpoint.load_model` accepts, or a ``HubertECG``
            (used as it is: moved to ``device`` and put in eval mode).
        layer: ``hidden_states`` index: 0 = encoder input, i = output of transformer layer i.
        rows: store rows to consider (default all); ``sample_fraction`` then keeps a random subset of
            them drawn with ``seed`` (k-means only needs a sample of a huge corpus).
        batch_size: rows per feature computation; shard_rows: rows per shard file.
        rank, world_size: this process's part (contiguous blocks of the selected rows).
        dtype: ``"float32"`` or ``"float16"`` (half the disk; hand descriptors keep ~3 digits).
        mfcc_deltas: append token-to-token MFCC deltas (39 MFCC values instead of 13).
        stop_after_shards: stop (raising :class:`LabelInterrupted`) after writing this many shards.

    Returns:
        ``out_dir``. Shards already on disk are kept (resume); ``features.json`` appears once every
        rank's shards exist.
    """
    opts = DumpOptions(
        kind=kind,
        checkpoint=checkpoint,
        layer=layer,
        rows=rows,
        sample_fraction=sample_fraction,
        seed=seed,
        batch_size=batch_size,
        shard_rows=shard_rows,
        rank=rank,
        world_size=world_size,
        device=device,
        progress=progress,
        dtype=dtype,
        mfcc_deltas=mfcc_deltas,
        stop_after_shards=stop_after_shards,
    )
    return _dump(store, Path(out_dir), opts)


def _dump(store: ECGStore, out_dir: Path, opts: DumpOptions) -> Path:
    """:func:`dump_features` on grouped options: plan (checked on resume), this rank's shards, the finish."""
    opts.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Shard files of this rank cut short by a kill (SIGKILL skips their clean-up); only this rank writes them.
    for stale in out_dir.glob(f".{_shard_name(opts.rank, 0)[:-5]}*.tmp"):
        stale.unlink(missing_ok=True)
    spec = _make_spec(store, opts.kind, opts.checkpoint, opts.layer, opts.mfcc_deltas)
    selected = _select_rows(store, opts.rows, opts.sample_fraction, opts.seed)
    computer = _FeatureComputer(store, spec, opts.checkpoint, opts.device)
    plan = _dump_plan(store, spec, computer, selected, opts)
    _check_or_write_plan(
        out_dir / "plan.json",
        plan,
        f"{out_dir}: holds features dumped with other settings; use a new directory or delete it",
    )
    if opts.rank == 0:
        _record_stage(
            out_dir,
            "features",
            {
                **plan,
                "batch_size": int(opts.batch_size),
                "device": str(opts.device),
                "rows_given": opts.rows is not None,
            },
            {"store": _store_print(store), "checkpoint": _checkpoint_print(spec.checkpoint)},
        )
    shards = _rank_shards(selected, opts.world_size, opts.shard_rows)
    _write_shards(out_dir, shards[opts.rank], computer, opts)
    if _dist_ready(opts.world_size):
        _barrier()
        if opts.rank != 0:
            return out_dir
    all_shards = [(name, part) for per_rank in shards for name, part in per_rank]
    if all(_shard_done(out_dir, name) for name, _ in all_shards):
        summary = {**plan, "complete": True, "shards": [{"name": name, "n": len(part)} for name, part in all_shards]}
        atomic_write_json(out_dir / "features.json", summary)
    return out_dir


@dataclass(frozen=True)
class DumpOptions:
    """The keyword arguments of :func:`dump_features` (see there), grouped and checked."""

    kind: str
    checkpoint: Any = None
    layer: int | None = None
    rows: Any = None
    sample_fraction: float = 1.0
    seed: int = 0
    batch_size: int = 256
    shard_rows: int = 4096
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    progress: bool = True
    dtype: str = "float32"
    mfcc_deltas: bool = False
    stop_after_shards: int | None = None

    def check(self) -> None:
        _check_rank(self.rank, self.world_size)
        if self.dtype not in ("float32", "float16"):
            raise TargetsError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if self.batch_size < 1 or self.shard_rows < 1:
            raise TargetsError(f"batch_size and shard_rows must be >= 1, got {self.batch_size} and {self.shard_rows}")


def _dump_plan(
    store: ECGStore, spec: FeatureSpec, computer: _FeatureComputer, selected: np.ndarray, opts: DumpOptions
) -> dict[str, Any]:
    """What defines a dump (checked on resume; ``features.json`` repeats it)."""
    return {
        "format": _FEATURES_FORMAT,
        "version": 1,
        **spec.to_dict(),
        "store": str(Path(store.path).resolve()),
        "store_rows": len(store),
        # a store re-prepared (or appended and trimmed) to the same row count holds other signals
        "store_manifest_sha256": _store_print(store)["manifest_sha256"],
        "n_tokens": computer.n_tokens,
        "dim": computer.dim,
        "dtype": opts.dtype,
        "n_rows": int(selected.size),
        "rows_sha256": hashlib.sha256(selected.tobytes()).hexdigest(),
        "sample_fraction": float(opts.sample_fraction),
        "seed": int(opts.seed),
        "shard_rows": int(opts.shard_rows),
        "world_size": int(opts.world_size),
    }


def _write_shards(
    out_dir: Path, shards: list[tuple[str, np.ndarray]], computer: _FeatureComputer, opts: DumpOptions
) -> None:
    """Write this rank's unfinished shards (rows and validity first, descriptors last: they mark it done)."""
    job = BlockJob(
        desc=f"features r{opts.rank}",
        unit="ECG",
        enabled=opts.progress,
        stop_after=opts.stop_after_shards,
        stopped=lambda: LabelInterrupted(
            f"{out_dir}: stopped after {opts.stop_after_shards} shards (incomplete); re-run the same command to finish"
        ),
    )
    job.run(
        shards,
        lambda shard: _write_feature_shard(out_dir, shard[0], shard[1], computer, opts, job.advance),
        size=lambda shard: len(shard[1]),
        done=lambda shard: _shard_done(out_dir, shard[0]),
    )


def _write_feature_shard(
    out_dir: Path,
    name: str,
    part: np.ndarray,
    computer: _FeatureComputer,
    opts: DumpOptions,
    advance: Callable[[int], None],
) -> None:
    """One feature shard: descriptors of ``part``'s rows in batches, then its rows and validity."""
    valid = np.empty((len(part), computer.n_tokens), dtype=bool)
    # Descriptors go straight into the (temporary) .npy file: a 4096-row shard of 768-wide
    # latents is over 1 GB, which need not sit in memory. Renamed last: it marks the shard done.
    with atomic_path(out_dir / f"{name}.npy") as tmp:
        feats = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=opts.dtype, shape=(len(part), computer.n_tokens, computer.dim)
        )
        for s in range(0, len(part), opts.batch_size):
            f, v = computer.batch(part[s : s + opts.batch_size])
            feats[s : s + len(f)], valid[s : s + len(f)] = f, v
            advance(len(f))
        feats.flush()
        del feats
        _save_npy(out_dir / f"{name}.rows.npy", part)
        _save_npy(out_dir / f"{name}.valid.npy", valid)


def _record_stage(where: Path, kind: str, settings: dict[str, Any], inputs: dict[str, Any]) -> None:
    """The stage's ``run.json`` (:func:`hubert_ecg.runs.write_stage_record`): settings, command, versions, inputs."""
    from ..runs import write_stage_record

    write_stage_record(where, kind, {kind: settings}, inputs=inputs)


def _store_print(store: ECGStore) -> dict[str, Any]:
    from ..runs import store_fingerprint

    return store_fingerprint(store)


def _checkpoint_print(checkpoint: str | None) -> dict[str, Any] | None:
    from ..runs import checkpoint_fingerprint

    return None if checkpoint is None or checkpoint == _IN_MEMORY else checkpoint_fingerprint(checkpoint)


def _check_or_write_plan(path: Path, plan: dict[str, Any], conflict: str) -> None:
    """Refuse to mix settings in one job; write the plan when it is new (same content from every rank).

    ``conflict`` is the message start naming the job; the changed settings and the remedy are appended.
    """
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(
            k
            for k in set(plan) | set(previous)
            if previous.get(k) != plan.get(k) and not (k in _ADDED_KEYS and k not in previous)
        )
        if changed:
            raise TargetsError(f"{conflict} ({', '.join(changed)})")
        return
    atomic_write_json(path, plan)


def _read_features_json(features_dir: Path) -> dict[str, Any]:
    meta_path = features_dir / "features.json"
    if not meta_path.exists():
        raise TargetsError(
            f"{features_dir}: no features.json (the dump is missing or unfinished; re-run "
            "`hubert-ecg features` with the same arguments)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _FEATURES_FORMAT or not meta.get("complete"):
        raise TargetsError(f"{meta_path}: not a complete hubert-ecg feature dump")
    return meta


def _iter_shards(features_dir: Path, meta: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows (n,), features (n, T, F) memmap, valid (n, T)) per shard, in the order of features.json."""
    for shard in meta["shards"]:
        name = shard["name"]
        try:
            rows = np.load(features_dir / f"{name}.rows.npy")
            valid = np.load(features_dir / f"{name}.valid.npy")
            feats = np.load(features_dir / f"{name}.npy", mmap_mode="r")
        except (OSError, ValueError) as err:
            raise TargetsError(f"{features_dir / name}.npy: unreadable feature shard ({err})") from None
        if feats.shape[:2] != valid.shape or len(rows) != len(feats):
            raise TargetsError(
                f"{features_dir / name}.npy: shard files disagree in shape ({feats.shape}, {valid.shape}, {rows.shape})"
            )
        yield rows, feats, valid


def iter_feature_batches(
    features_dir: str | os.PathLike,
    max_rows: int | None = None,
    *,
    exclude_rows: np.ndarray | None = None,
    only_rows: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Stream the valid tokens' descriptors of a finished dump as float32 ``(n_tokens, F)`` chunks.

    Args:
        features_dir: a directory written by :func:`dump_features` (``features.json`` must say complete).
        max_rows: stop after this many token rows (the unit k-means counts in).
        exclude_rows / only_rows: store rows whose tokens to skip / to keep (held-out splits).

    Padded tokens (``valid`` False) are never yielded. Pass ``lambda: iter_feature_batches(d)`` to
    :func:`~hubert_ecg.pretraining.kmeans.fit_kmeans` when several passes are needed.
    """
    features_dir = Path(features_dir)
    meta = _read_features_json(features_dir)
    remaining = math.inf if max_rows is None else int(max_rows)
    for rows, feats, valid in _iter_shards(features_dir, meta):
        if remaining <= 0:
            return
        keep_rows = np.ones(len(rows), dtype=bool)
        if exclude_rows is not None:
            keep_rows &= ~np.isin(rows, exclude_rows)
        if only_rows is not None:
            keep_rows &= np.isin(rows, only_rows)
        if not keep_rows.any():
            continue
        picked = np.flatnonzero(keep_rows)
        # A few hundred ECGs at a time: a whole shard of latents would be a gigabyte-sized chunk.
        for start in range(0, len(picked), _ITER_ECGS):
            if remaining <= 0:
                return
            some = picked[start : start + _ITER_ECGS]
            chunk = np.asarray(feats[some], dtype=np.float32)[valid[some]]
            if chunk.shape[0] > remaining:
                chunk = chunk[: int(remaining)]
            remaining -= chunk.shape[0]
            if chunk.shape[0]:
                yield chunk


# ---------------------------------------------------------------------------------------------
# 2. Cluster
# ---------------------------------------------------------------------------------------------
def _kmeans_kind(feature_kind: str) -> str:
    # KMeansMetadata documents "latent" for model features; the feature spec keeps the CLI's "hidden".
    return "latent" if feature_kind == "hidden" else feature_kind


def cluster_features(
    features_dir: str | os.PathLike,
    ks: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    normaliser: str = "l2",
    held_out_fraction: float = 0.1,
    seed: int = 0,
    backend: str = "sklearn",
    max_fit_rows: int | None = None,
    max_held_out_rows: int = 100_000,
    epochs: int | None = None,
    fit_batch_size: int = 10_000,
    n_threads: int | None = None,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Fit one k-means model per K on a feature dump, streaming over its shards.

    A seeded ``held_out_fraction`` of the dump's ECG rows (whole ECGs, since tokens of one ECG are
    correlated) is kept out of fitting and scored with :func:`~hubert_ecg.pretraining.kmeans.cluster_quality`
    (at most ``max_held_out_rows`` tokens are read for it). With ``held_out_fraction=0`` quality is
    measured on (the first tokens of) the fitting data, and ``quality.json`` says so.

    Writes ``out_dir/k{K}/kmeans.safetensors`` (its metadata names the feature kind, layer, checkpoint
    and the whole :class:`FeatureSpec`, which :func:`label_store` replays), ``out_dir/k{K}/quality.json``
    (written last: a K with both files and the same settings is skipped on re-runs), ``out_dir/sweep.json``
    and, for more than one K, ``out_dir/inertia_vs_k.png`` (held-out inertia against K).

    Returns:
        one dict per K: ``k``, ``path`` (the safetensors file), ``held_out``, and the quality numbers.
    """

    features_dir, out_dir = Path(features_dir), Path(out_dir)
    meta = _read_features_json(features_dir)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 2:
        # K=1 gives every token the same target: pre-training on it reaches accuracy 1 and learns nothing.
        raise TargetsError(f"k values must be integers >= 2, got {ks}")
    if not 0.0 <= held_out_fraction < 1.0:
        raise TargetsError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    fit_settings = {
        "normaliser": normaliser,
        "held_out_fraction": held_out_fraction,
        "seed": seed,
        "backend": backend,
        "max_fit_rows": max_fit_rows,
        "epochs": epochs,
        "fit_batch_size": fit_batch_size,
    }
    held_rows = _held_out_rows(features_dir, meta, held_out_fraction, seed)
    n_fit = _fitting_tokens(features_dir, meta, held_rows, max_fit_rows, max(ks))
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_npy(out_dir / "held_out_rows.npy", held_rows)  # which ECGs quality was measured on
    features = {"path": str(features_dir.resolve()), "rows_sha256": meta["rows_sha256"], "rows": meta["n_rows"]}
    _record_stage(
        out_dir, "cluster", {"ks": ks, **fit_settings, "max_held_out_rows": max_held_out_rows}, {"features": features}
    )
    held_chunks = list(
        iter_feature_batches(features_dir, max_held_out_rows, only_rows=held_rows if held_rows.size else None)
    )
    if not held_chunks:
        raise TargetsError(f"{features_dir}: the held-out rows have no valid tokens")
    # Recorded in every quality.json: a K fitted with the same settings on the same dump is reused.
    # The descriptor and the store content too: a dump re-made in the same folder from another checkpoint
    # (or a re-prepared store) has the same rows but other features, and its old K must be refitted.
    settings = {
        "features": features["path"],
        "features_rows_sha256": meta["rows_sha256"],
        "feature_spec": FeatureSpec.from_dict(meta).to_dict(),
        "features_store_manifest_sha256": meta.get("store_manifest_sha256"),
        **fit_settings,
    }
    job = _ClusterJob(
        features_dir,
        meta,
        held_rows,
        np.concatenate(held_chunks),
        n_threads,
        settings,
        _normaliser_sample(features_dir, meta, held_rows, normaliser, n_fit, seed),
    )
    results = [
        job.fit(k, out_dir / f"k{k}")
        for k in progress(ks, desc="k-means", unit="K", enabled=show_progress and len(ks) > 1)
    ]
    _write_sweep(out_dir, features["path"], results)
    return results


def _fitting_tokens(
    features_dir: Path, meta: dict[str, Any], held_rows: np.ndarray, max_fit_rows: int | None, k_max: int
) -> int:
    """Valid tokens left for fitting; checked before any K is fitted, as more centroids than points
    cannot be fitted (or only degenerately)."""
    n_fit = _valid_tokens(features_dir, meta, held_rows)
    if max_fit_rows is not None:
        n_fit = min(n_fit, int(max_fit_rows))
    if k_max > n_fit:
        raise TargetsError(
            f"{features_dir}: K={k_max} is more than the {n_fit} valid tokens available for fitting "
            f"(after holding out {held_rows.size} ECGs); dump more rows or use a smaller K"
        )
    return n_fit


def _write_sweep(out_dir: Path, features: str, results: list[dict[str, Any]]) -> None:
    """``sweep.json`` (every K's quality numbers) and, for several K, the inertia-against-K figure."""
    summary = [{key: value for key, value in r.items() if key != "cluster_sizes"} for r in results]
    atomic_write_json(out_dir / "sweep.json", {"features": features, "results": summary})
    if len(results) > 1:
        from ..plots import plot_inertia_vs_k

        plot_inertia_vs_k(
            [r["k"] for r in results], [r["inertia_total"] for r in results], out_dir / "inertia_vs_k.png"
        )


_NORMALISER_TOKENS = 100_000  # fit_kmeans's default normaliser_rows


def _normaliser_sample(
    features_dir: Path, meta: dict[str, Any], held_rows: np.ndarray, normaliser: str, n_fit: int, seed: int
) -> np.ndarray | None:
    """Fitting descriptors of a seeded random set of ECGs, for standardisation statistics (None: not needed).

    Without it the statistics come from the head of the stream, i.e. the first ECGs in store order, and a
    store prepared source after source (one hospital, then the next) would be standardised by the first
    source alone. When every fitting token fits in the sample, the head *is* all of them: None.
    """
    if normaliser not in ("standardise", "standardise+l2") or n_fit <= _NORMALISER_TOKENS:
        return None
    rows = np.concatenate([r for r, _, _ in _iter_shards(features_dir, meta)])
    if held_rows.size:
        rows = rows[~np.isin(rows, held_rows)]
    per_row = max(1.0, n_fit / max(1, len(rows)))
    n_pick = min(len(rows), int(math.ceil(_NORMALISER_TOKENS / per_row)))
    picked = np.sort(np.random.default_rng([seed, 5]).choice(rows, size=n_pick, replace=False))
    return np.concatenate(list(iter_feature_batches(features_dir, only_rows=picked)))


def _valid_tokens(features_dir: Path, meta: dict[str, Any], held_rows: np.ndarray) -> int:
    """Valid tokens of the dump's rows outside ``held_rows`` (what k-means can be fitted on)."""
    total = 0
    for rows, _, valid in _iter_shards(features_dir, meta):
        keep = ~np.isin(rows, held_rows) if held_rows.size else np.ones(len(rows), dtype=bool)
        total += int(valid[keep].sum())
    return total


def _held_out_rows(features_dir: Path, meta: dict[str, Any], fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the dump's ECG rows (whole ECGs), sorted; empty for fraction 0."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    all_rows = np.concatenate([rows for rows, _, _ in _iter_shards(features_dir, meta)])
    n_held = min(len(all_rows) - 1, max(1, int(round(fraction * len(all_rows)))))
    if n_held < 1:
        raise TargetsError(f"{features_dir}: {len(all_rows)} rows are too few to hold any out")
    return np.sort(np.random.default_rng(seed).choice(all_rows, size=n_held, replace=False))


@dataclass
class _ClusterJob:
    """One dump, its held-out split and the fit settings; :meth:`fit` makes (or reuses) one K."""

    features_dir: Path
    meta: dict[str, Any]
    held_rows: np.ndarray
    held_out: np.ndarray  # held-out descriptors for the quality numbers
    n_threads: int | None
    settings: dict[str, Any]  # recorded in quality.json; a K with the same settings is reused
    normaliser_sample: np.ndarray | None = None  # descriptors the standardisation is fitted on (None: stream head)

    def fit(self, k: int, k_dir: Path) -> dict[str, Any]:
        from .kmeans import KMeansMetadata, cluster_quality, fit_kmeans

        model_path, quality_path = k_dir / "kmeans.safetensors", k_dir / "quality.json"
        if model_path.exists() and quality_path.exists():
            previous = json.loads(quality_path.read_text())
            recorded = previous.get("settings") or {}
            if set(recorded) <= set(self.settings) and all(
                recorded.get(key) == value
                for key, value in self.settings.items()
                if key in recorded or key not in _ADDED_KEYS
            ):
                return previous
        spec, cfg = FeatureSpec.from_dict(self.meta), self.settings
        metadata = KMeansMetadata(
            kind=_kmeans_kind(spec.kind),
            layer=spec.layer,
            source_checkpoint=spec.checkpoint,
            extra={
                "feature_spec": spec.to_dict(),
                "features_dir": cfg["features"],
                "n_tokens": self.meta["n_tokens"],
                "dim": self.meta["dim"],
            },
        )
        model = fit_kmeans(
            lambda: iter_feature_batches(self.features_dir, exclude_rows=self.held_rows),
            k,
            normaliser=cfg["normaliser"],
            normaliser_sample=self.normaliser_sample,
            seed=cfg["seed"],
            backend=cfg["backend"],
            batch_size=cfg["fit_batch_size"],
            epochs=cfg["epochs"],
            max_rows=cfg["max_fit_rows"],
            n_threads=self.n_threads,
            metadata=metadata,
        )
        with atomic_path(model_path) as tmp:
            model.save(tmp)
        quality = cluster_quality(model, self.held_out, seed=cfg["seed"])
        record = {
            "k": k,
            "path": str(model_path),
            "held_out": bool(self.held_rows.size),
            "n_held_out_ecgs": int(self.held_rows.size),
            **quality,
            "settings": cfg,
            "kmeans_sha256": sha256_file(model_path),
        }
        atomic_write_json(quality_path, record)  # last: marks this K done
        return record


# ---------------------------------------------------------------------------------------------
# 3. Label the store
# ---------------------------------------------------------------------------------------------
def _resolve_kmeans_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / "kmeans.safetensors" if p.is_dir() else p


def _spec_for_model(
    store: ECGStore, model: Any, kind: str | None, checkpoint: Any, layer: int | None, source: Path
) -> FeatureSpec:
    """The descriptor a k-means model was fitted on (its metadata); explicit arguments may only confirm it.

    They may name the same checkpoint elsewhere (same weights) or an in-memory model; anything that
    gives another descriptor than the recorded one is refused. A model without a recorded spec (made by
    hand) takes the arguments as they are.
    """
    stored = dict(model.metadata.extra.get("feature_spec") or {})
    meta_kind = stored.get("kind") or ("hidden" if model.metadata.kind == "latent" else model.metadata.kind)
    kind = kind or meta_kind
    if kind is None:
        raise TargetsError("the k-means model does not record its feature kind; pass kind=...")
    if kind == "latent":
        kind = "hidden"
    if kind == "hidden" and checkpoint is None:
        checkpoint = stored.get("checkpoint") or model.metadata.source_checkpoint
    if kind == "hidden" and layer is None:
        layer = stored.get("layer") if stored.get("layer") is not None else model.metadata.layer
    if kind != "hidden":  # the arguments are for the hidden-state models of the job (create checks some is)
        checkpoint = layer = None
    spec = _make_spec(store, kind, checkpoint, layer, bool(stored.get("mfcc_deltas", False)))
    if stored and (stored.get("fs") != spec.fs or stored.get("window") != spec.window):
        raise TargetsError(
            f"{store.path}: rows are {spec.fs:g} Hz / {spec.window}-sample windows but the k-means "
            f"features were {stored.get('fs')} Hz / {stored.get('window')}"
        )
    if stored:
        # Centroids only mean something for the descriptor they were fitted on: another kind, layer or
        # checkpoint of the same width would be assigned without complaint, to meaningless clusters.
        recorded = FeatureSpec.from_dict(stored)
        diffs = recorded.differences(spec)
        if diffs:
            hint = (
                "the checkpoint changed since the k-means model was fitted: dump and cluster its features again"
                if recorded.checkpoint == spec.checkpoint and diffs == ["checkpoint (weights sha256)"]
                else "leave kind/layer/checkpoint out to use the recorded ones, or cluster features of this descriptor"
            )
            raise TargetsError(
                f"{source}: fitted on {_describe(recorded)} but labelling would use "
                f"{_describe(spec)} (differs in: {', '.join(diffs)}); {hint}"
            )
    return spec


def _describe(spec: FeatureSpec) -> str:
    """A descriptor in words, for error messages."""
    if spec.kind != "hidden":
        return f"{spec.kind} descriptors" + (" with MFCC deltas" if spec.mfcc_deltas else "")
    sha = f", weights sha256 {spec.checkpoint_sha256[:12]}" if spec.checkpoint_sha256 else ""
    return f"hidden states of layer {spec.layer} of {spec.checkpoint}{sha}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TargetsError(f"{path}: unreadable ({err}); delete it and the targets beside it to label again") from None
    if not isinstance(data, dict):
        raise TargetsError(f"{path}: not a targets record; delete it and the targets beside it to label again")
    return data


def _stale_reasons(info: dict[str, Any], store: ECGStore, spec: FeatureSpec, manifest_sha256: str | None) -> list[str]:
    """Why finished targets (their ``{name}.json``) no longer describe ``store`` under ``spec``; empty if current."""
    reasons = []
    if info.get("n_rows") is not None and int(info["n_rows"]) != len(store):
        reasons.append(f"labelled {info['n_rows']} rows, the store now has {len(store)}")
    recorded_manifest = info.get("store_manifest_sha256")
    if recorded_manifest and manifest_sha256 and recorded_manifest != manifest_sha256:
        reasons.append("the store's manifest changed since")
    recorded_spec = info.get("feature_spec")
    if isinstance(recorded_spec, dict):
        diffs = FeatureSpec.from_dict(recorded_spec).differences(spec)
        if diffs:
            reasons.append(f"the descriptor changed since: {', '.join(diffs)}")
    return reasons


def _damage(final: Path, info: dict[str, Any]) -> list[str]:
    """Why a finished targets file cannot be what its record says (truncated, replaced); empty if intact."""
    try:
        array = np.load(final, mmap_mode="r")
    except (OSError, ValueError) as err:
        return [f"the file is unreadable: {err}"]
    expected = (info.get("n_rows"), info.get("n_tokens"))
    if None not in expected and tuple(array.shape) != expected:
        return [f"the file holds shape {tuple(array.shape)}, its record says {expected}"]
    return []


def _read_ranges(path: Path) -> list[list[int]]:
    return json.loads(path.read_text())["done"] if path.exists() else []


def _add_block(ranges: list[list[int]], block: int) -> list[list[int]]:
    """Add ``block`` to sorted half-open ranges, merging neighbours (a rank's file stays a few ranges long)."""
    ranges = sorted(ranges + [[block, block + 1]])
    merged: list[list[int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def _done_blocks(targets_dir: Path, name: str, n_blocks: int) -> np.ndarray:
    done = np.zeros(n_blocks, dtype=bool)
    for progress_file in targets_dir.glob(f"{name}.progress-r*.json"):
        for lo, hi in _read_ranges(progress_file):
            done[lo : min(hi, n_blocks)] = True
    return done


def _create_memmap_once(path: Path, shape: tuple[int, int]) -> None:
    """Create a zero ``.npy`` memmap at ``path`` unless it exists; never replaces one another rank is filling."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=shape)
    array.flush()
    del array
    try:
        os.link(tmp, path)  # fails if another rank got there first, unlike a rename
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def label_store(
    store: ECGStore,
    kmeans_paths: Sequence[str | os.PathLike],
    name: str,
    *,
    kind: str | None = None,
    checkpoint: Any = None,
    layer: int | None = None,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    progress: bool = True,
    stop_after_blocks: int | None = None,
) -> list[str]:
    """Give every token of every store row its cluster id under each k-means model, as int16 targets.

    Descriptors are computed block by block (``batch_size`` rows) on the fly, never stored; each
    model's own normaliser is applied before assignment (:meth:`KMeansModel.assign`), so fitting and
    labelling agree. Models sharing a descriptor compute it once.

    Args:
        store: the store to label (all rows, first window, as pre-training reads them).
        kmeans_paths: k-means files (or ``k{K}`` directories) from :func:`cluster_features`.
        name: target name; one model writes ``store.targets_path(name)``, several write
            ``{name}-0``, ``{name}-1``, ... (one codebook each).
        kind, checkpoint, layer: override the descriptor recorded in the k-means metadata.
        rank, world_size: rank r fills the r-th contiguous range of blocks of the shared memmap.
        stop_after_blocks: stop (raising :class:`LabelInterrupted`) after this many blocks.

    Returns:
        the target names written, for ``store.targets(name)`` / ``StoreWindows(targets=...)``. Each
        ``{name}.npy`` is int16 ``(len(store), T)``, with ``{name}.json`` beside it (k-means path and
        sha256, K, kind/layer/checkpoint). Finished targets with the same k-means are kept as they are.
    """
    _check_rank(rank, world_size)
    if batch_size < 1:
        raise TargetsError(f"batch_size must be >= 1, got {batch_size}")
    if not kmeans_paths:
        raise TargetsError("label_store needs at least one k-means model")
    if not name or "/" in name or name.startswith("."):
        raise TargetsError(f"invalid target name {name!r}")
    job = _LabelJob.create(store, kmeans_paths, name, kind, checkpoint, layer, batch_size)
    if job.finished():
        return job.names
    job.start(checkpoint, device, rank)
    outputs = job.open_outputs()
    job.run_blocks(outputs, rank, world_size, device, progress, stop_after_blocks)
    del outputs
    if _dist_ready(world_size):
        _barrier()
        if rank != 0:
            return job.names
    if job.all_blocks_done():  # else other ranks still run; the last one to finish completes the job
        job.finish()
    return job.names


@dataclass
class _LabelJob:
    """One labelling of a store with one or more k-means models (see :func:`label_store`)."""

    store: ECGStore
    files: list[Path]
    models: list[Any]
    names: list[str]
    specs: list[FeatureSpec]
    shas: list[str]
    batch_size: int
    manifest_sha256: str | None = None
    computers: dict[FeatureSpec, _FeatureComputer] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        store: ECGStore,
        kmeans_paths: Sequence[str | os.PathLike],
        name: str,
        kind: str | None,
        checkpoint: Any,
        layer: int | None,
        batch_size: int,
    ) -> _LabelJob:
        from .kmeans import KMeansModel

        files = [_resolve_kmeans_file(p) for p in kmeans_paths]
        models = [KMeansModel.load(f) for f in files]
        for f, model in zip(files, models):
            if model.k > np.iinfo(np.int16).max:
                raise TargetsError(f"{f}: K={model.k} does not fit int16 targets")
        names = [name] if len(models) == 1 else [f"{name}-{i}" for i in range(len(models))]
        specs = [_spec_for_model(store, m, kind, checkpoint, layer, f) for f, m in zip(files, models)]
        if (checkpoint is not None or layer is not None) and all(s.kind != "hidden" for s in specs):
            raise TargetsError(
                f"{files[0]}: no k-means model here was fitted on hidden states: a checkpoint or layer "
                "would be ignored (hand-made descriptors are computed from the signal)"
            )
        job = cls(
            store,
            files,
            models,
            names,
            specs,
            [sha256_file(f) for f in files],
            batch_size,
            _store_print(store)["manifest_sha256"],
        )
        job.targets_dir.mkdir(parents=True, exist_ok=True)
        return job

    @property
    def targets_dir(self) -> Path:
        return self.store.targets_path(self.names[0]).parent

    @property
    def job(self) -> str:
        return self.names[0]  # the progress of the whole job is kept under the first name

    @property
    def n_blocks(self) -> int:
        return max(1, math.ceil(len(self.store) / self.batch_size))

    @property
    def partials(self) -> list[Path]:
        return [self.store.targets_path(n).with_name(f"{n}.npy.partial") for n in self.names]

    def finished(self) -> bool:
        """True when every target exists from these k-means models, for the store as it is now.

        Another model's targets are refused, and so are stale ones: labelled before the store gained
        (or changed) rows, or from descriptors that are no longer what the k-means model and its
        checkpoint give. Reused, they would train on targets of other signals (or none, for new rows).
        """
        for name, sha, spec in zip(self.names, self.shas, self.specs):
            final, info_file = self.store.targets_path(name), self.targets_dir / f"{name}.json"
            if not final.exists():
                return False
            info = _read_json(info_file) if info_file.exists() else {}
            if info.get("kmeans_sha256") != sha:
                raise TargetsError(
                    f"{final}: targets from another k-means model exist; use another name or delete them"
                )
            stale = _stale_reasons(info, self.store, spec, self.manifest_sha256) + _damage(final, info)
            if stale:
                raise TargetsError(
                    f"{final}: stale targets ({'; '.join(stale)}); delete {final.name} and "
                    f"{info_file.name} to label again, or use another name"
                )
        return True

    def start(self, checkpoint: Any, device: str, rank: int) -> None:
        """Build the descriptor computers, check the plan, write the run record (rank 0)."""
        for spec in self.specs:
            if spec not in self.computers:
                self.computers[spec] = _FeatureComputer(
                    self.store, spec, checkpoint if spec.kind == "hidden" else None, device
                )
        for f, spec, model in zip(self.files, self.specs, self.models):
            if self.computers[spec].dim != model.dim:
                raise TargetsError(
                    f"{f}: the model has {model.dim}-dimensional centroids but {spec.kind} "
                    f"descriptors have {self.computers[spec].dim}"
                )
        plan = {
            "format": _TARGETS_FORMAT,
            "names": self.names,
            "kmeans_sha256": self.shas,
            "n_rows": len(self.store),
            "n_tokens": self.n_tokens,
            "block_rows": self.batch_size,
            "feature_specs": [s.to_dict() for s in self.specs],
        }
        where = self.targets_dir / self.job
        _check_or_write_plan(
            self.targets_dir / f"{self.job}.label-plan.json",
            plan,
            f"{where}.npy.partial: an unfinished labelling with other settings exists; "
            f"re-run it with its own settings, or delete {where}.* to start over",
        )
        if rank == 0:
            _record_stage(
                self.targets_dir / f"{self.job}.run.json",
                "label",
                {**plan, "kmeans": [str(f.resolve()) for f in self.files], "device": str(device)},
                {
                    "store": _store_print(self.store),
                    "kmeans_sha256": self.shas,
                    "checkpoint": _checkpoint_print(self.specs[0].checkpoint),
                },
            )

    @property
    def n_tokens(self) -> int:
        return next(iter(self.computers.values())).n_tokens

    def open_outputs(self) -> list[Any]:
        """The shared ``.npy.partial`` memmaps (created once, by whichever rank comes first)."""
        shape = (len(self.store), self.n_tokens)
        for p in self.partials:
            _create_memmap_once(p, shape)
        outputs = [np.load(p, mmap_mode="r+") for p in self.partials]
        for p, out in zip(self.partials, outputs):
            if out.shape != shape or out.dtype != np.int16:
                raise TargetsError(
                    f"{p}: partial targets of shape {out.shape} {out.dtype}, expected "
                    f"{shape} int16; delete it and re-run"
                )
        return outputs

    def run_blocks(
        self, outputs: list[Any], rank: int, world_size: int, device: str, progress: bool, stop_after_blocks: int | None
    ) -> None:
        """Label this rank's unfinished blocks; each is flushed before it is recorded as done."""
        n_rows, size = len(self.store), self.batch_size
        progress_file = self.targets_dir / f"{self.job}.progress-r{rank}.json"
        own = _read_ranges(progress_file)
        done = _done_blocks(self.targets_dir, self.job, self.n_blocks)
        assign_device = device if str(device).startswith("cuda") else None

        def block_rows(block: int) -> np.ndarray:
            return np.arange(block * size, min((block + 1) * size, n_rows), dtype=np.int64)

        def label_block(block: int) -> None:
            rows = block_rows(block)
            feats = {spec: comp.batch(rows)[0] for spec, comp in self.computers.items()}
            for out, model, spec in zip(outputs, self.models, self.specs):
                out[rows[0] : rows[-1] + 1] = model.assign(feats[spec], device=assign_device)
            for out in outputs:
                out.flush()  # labels reach the file before the block is recorded as done

        def record_done(block: int) -> None:
            nonlocal own
            own = _add_block(own, block)
            atomic_write_json(progress_file, {"done": own})

        BlockJob(
            desc=f"label r{rank}",
            unit="ECG",
            enabled=progress,
            stop_after=stop_after_blocks,
            stopped=lambda: LabelInterrupted(
                f"{self.partials[0]}: stopped after {stop_after_blocks} blocks "
                "(incomplete); re-run the same command to finish"
            ),
        ).run(
            rank_share(range(self.n_blocks), rank, world_size),
            label_block,
            size=lambda block: len(block_rows(block)),
            done=lambda block: bool(done[block]),
            mark_done=record_done,
        )

    def all_blocks_done(self) -> bool:
        return bool(_done_blocks(self.targets_dir, self.job, self.n_blocks).all())

    def finish(self) -> None:
        """Write each ``{name}.json``, rename the partial files into place, remove progress and plan files."""
        for i, (n, p) in enumerate(zip(self.names, self.partials)):
            spec = self.specs[i]
            info = {
                "format": _TARGETS_FORMAT,
                "name": n,
                "kmeans": str(self.files[i].resolve()),
                "kmeans_sha256": self.shas[i],
                "k": self.models[i].k,
                "kind": spec.kind,
                "layer": spec.layer,
                "checkpoint": spec.checkpoint,
                "feature_spec": spec.to_dict(),
                "normaliser": self.models[i].normaliser.mode,
                "n_rows": len(self.store),
                "n_tokens": self.n_tokens,
                "dtype": "int16",
                "store": str(Path(self.store.path).resolve()),
                "store_manifest_sha256": self.manifest_sha256,
            }
            atomic_write_json(self.targets_dir / f"{n}.json", info)
            try:
                os.replace(p, self.store.targets_path(n))
            except FileNotFoundError:  # another rank finished the same job a moment earlier
                if not self.store.targets_path(n).exists():
                    raise
        job, folder = self.job, self.targets_dir
        for leftover in (
            list(folder.glob(f"{job}.progress-r*.json"))
            + [folder / f"{job}.label-plan.json"]
            + list(folder.glob(f".{job}.progress-r*.tmp"))
        ):  # progress writes cut by a kill
            leftover.unlink(missing_ok=True)
