"""Prediction and embeddings on any-length ECGs, from NumPy arrays or files in any supported format.

The checkpoint's own preprocessing spec is replayed (the published pipeline when a checkpoint
carries none). Records longer than the 5 s window are cut into windows (sliding by default, the
last one flush with the end) whose outputs are aggregated by mean or max; shorter ones are padded
at the end of each lead with an attention mask, down to ``spec.min_window_s`` (1.5 s), below
which a clear error is raised.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .evaluate import probabilities
from .model import HubertECG
from .preprocess import PreprocessSpec, cut_windows, preprocess_signal, window_starts


def spec_of(model: HubertECG) -> PreprocessSpec:
    """The preprocessing the model was trained with (published default when unknown)."""
    if model.info.preprocessing:
        return PreprocessSpec.from_dict(model.info.preprocessing)
    return PreprocessSpec()


def _standard_order(signal: np.ndarray, leads: Sequence[str] | None) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2:
        raise ValueError(f"expected a (leads, samples) array, got shape {signal.shape}")
    if leads is None:
        if signal.shape[0] != 12 and signal.shape[1] == 12:
            signal = signal.T
        if signal.shape[0] != 12:
            raise ValueError(f"expected 12 leads in the order I..V6 (or pass leads=...), got shape {signal.shape}")
        return signal
    from .io import arrange_leads
    ordered, _ = arrange_leads("<array>", signal, list(leads))
    return ordered


def model_windows(model: HubertECG, signal: np.ndarray, fs: float, *, leads: Sequence[str] | None = None,
                  windows: str = "sliding", stride_s: float | None = None, n_crops: int = 3,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw (leads, samples) at ``fs`` -> model windows (W, 12*T) and sample masks (W, 12*T)."""
    spec = spec_of(model)
    prepared = preprocess_signal(_standard_order(signal, leads), float(fs), spec)
    stride = None if stride_s is None else max(1, int(round(stride_s * spec.target_hz)))
    starts = window_starts(prepared.shape[1], spec.window_samples, mode=windows, stride=stride,
                           n_crops=n_crops, rng=seed)
    return cut_windows(prepared, spec, starts)


def _runner(model: HubertECG, engine: str, layer: int | None, cache: dict[str, Any] | None = None) -> Any:
    """The forward to use: the model itself (exact float32) or a fast path of ``fast_inference``.

    Fast engines are built once per ``cache`` (an :class:`~hubert_ecg.pipeline.ECGPipeline` or one
    file job owns it), so the model object itself never carries hidden state."""
    if engine == "eager":
        return None
    if layer is not None:
        raise ValueError("fast inference engines give the last layer only; use --engine eager with --layer")
    from .fast_inference import optimise_for_inference
    cache = {} if cache is None else cache
    if engine not in cache:
        cache[engine] = optimise_for_inference(model, next(model.parameters()).device, engine)
    return cache[engine]


def check_layer(model: HubertECG, layer: int | None) -> None:
    """Refuse a hidden-state index the model does not have before any record is read."""
    if layer is None:
        return
    n = model.config.num_hidden_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= n:
        raise ValueError(f"layer {layer!r} does not exist: this model has hidden states 0..{n} "
                         f"(0 = encoder input, {n} = last layer)")


@torch.no_grad()
def run_windows(model: HubertECG, x: np.ndarray, mask: np.ndarray, *, batch_size: int = 64,
                layer: int | None = None, tokens: bool = False, engine: str = "eager",
                runners: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Forward windows in batches of ``batch_size`` (one model call per batch, windows of any records).

    Returns ``logits`` (W, L) when the model has a head, and ``embedding`` (W, H) (mean over valid
    tokens) or (W, T, H) with ``tokens``, from ``layer`` (hidden-state numbering: 0 = encoder input,
    i = output of layer i; None = last). ``engine``: ``eager`` (exact float32) or a fast path
    (``auto``, ``bf16``, ``int8``, ``onnx``, ``compile``; accuracy costs in
    :mod:`hubert_ecg.fast_inference`), cached in ``runners`` when given."""
    check_layer(model, layer)
    device = next(model.parameters()).device
    runner = _runner(model, engine, layer, runners)
    outs: dict[str, list[np.ndarray]] = {"logits": [], "embedding": []}
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device)
        mb_np = mask[start:start + batch_size]
        mb = None if mb_np.all() else torch.from_numpy(np.ascontiguousarray(mb_np)).to(device)
        if runner is not None:
            out = runner(xb, mb)
        else:
            out = model(xb, mb, output_hidden_states=layer is not None)
        hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
        if out.logits is not None:
            outs["logits"].append(out.logits.float().cpu().numpy())
        token_mask = out.token_mask
        if tokens:
            emb = hidden if token_mask is None else hidden * token_mask.unsqueeze(-1)
        else:
            emb = HubertECG.pool(hidden, token_mask)
        outs["embedding"].append(emb.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items() if v}


def label_names(model: HubertECG) -> list[str]:
    """The model's output names (``output_i`` when it carries none); empty without a head."""
    if model.info.label_names:
        return list(model.info.label_names)
    return [f"output_{i}" for i in range(model.config.head.num_labels)] if model.config.head else []


def decisions(task: str, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Decisions for probabilities ``(..., L)``: 0/1 at ``thresholds`` (0.5 when None), argmax one-hot
    for multi-class, -1 for regression (no decision)."""
    probs = np.asarray(probs)
    if task == "multi_class":
        out = np.zeros_like(probs, dtype=np.int64)
        np.put_along_axis(out, np.argmax(probs, axis=-1)[..., None], 1, axis=-1)
        return out
    if task == "regression":
        return np.full(np.shape(probs), -1, dtype=np.int64)
    limit = np.asarray(thresholds if thresholds is not None and len(thresholds) else 0.5, dtype=np.float64)
    return (probs >= limit).astype(np.int64)


def _decisions(model: HubertECG, probs: np.ndarray) -> np.ndarray:
    return decisions(model.info.task or "multi_label", np.atleast_1d(probs), model.info.thresholds)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
@dataclass
class BatchJobSummary:
    out: Path
    written: int
    rejected: int
    rejects_path: Path | None


def _writer(path: Path, header: list[str]) -> Any:
    if path.suffix == ".parquet":
        return _ParquetRows(path, header)
    return _CsvRows(path, header)


class _CsvRows:
    def __init__(self, path: Path, header: list[str]) -> None:
        from .atomic import atomic_path
        self._ctx = atomic_path(path)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "w", newline="")
        self._w = csv.writer(self._fh)
        self._w.writerow(header)

    def write(self, row: list[Any]) -> None:
        self._w.writerow(row)

    def close(self) -> None:
        self._fh.close()
        self._ctx.__exit__(None, None, None)


class _ParquetRows:
    def __init__(self, path: Path, header: list[str]) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("writing Parquet needs `pip install pyarrow` (or use a .csv output)") from None
        self.path, self.header, self.rows = path, header, []

    def write(self, row: list[Any]) -> None:
        self.rows.append(row)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .atomic import atomic_path
        columns = {name: [r[i] for r in self.rows] for i, name in enumerate(self.header)}
        with atomic_path(self.path) as tmp:
            pq.write_table(pa.table(columns), str(tmp))


def _source_windows(args: tuple[Any, dict[str, Any], str, int | None, dict[str, Any]]) -> tuple[str, Any]:
    """Worker: read one record and cut its model windows -> ("ok", payload) or ("reject", reason)."""
    from .io import read_source

    src, spec_dict, windows, stride, read_kwargs = args
    spec = PreprocessSpec.from_dict(spec_dict)
    try:
        record = read_source(src, **read_kwargs)
        prepared = preprocess_signal(record.signal, record.fs, spec)
        starts = window_starts(prepared.shape[1], spec.window_samples, mode=windows, stride=stride)
        x, mask = cut_windows(prepared, spec, starts)
    except ValueError as err:
        return "reject", (src.record_id, src.path, str(err).splitlines()[0])
    seconds = int(np.ceil(record.signal.shape[1] / record.fs))
    return "ok", (record.record_id, record.source, seconds, x, mask)


def predict_files(model: HubertECG, inputs: Sequence[str], out: str | Path, *, mode: str = "predict",
                  layer: int | None = None, windows: str = "sliding", aggregate: str = "mean",
                  stride_s: float | None = None, batch_size: int = 64, read_kwargs: dict[str, Any] | None = None,
                  progress: bool = True, allow_outside_root: bool = False, engine: str = "eager",
                  workers: int = 1) -> BatchJobSummary:
    """Predict (or embed) every record under ``inputs``; one output row per record (CSV or Parquet).

    Records are read and cut into windows by ``workers`` processes, and windows of several records
    share a forward batch, so a GPU is not left waiting on one record at a time. Bad records are
    skipped and listed with their reason in ``<out>.rejects.csv``; the job goes on.
    ``allow_outside_root``: see :func:`hubert_ecg.io.discover_sources` (manifest path safety).
    """
    import multiprocessing as mp

    from tqdm.auto import tqdm

    from .atomic import atomic_path
    from .io import discover_sources
    from .store import _init_prepare_worker

    if mode == "predict" and model.config.head is None:
        raise ValueError("this model has no classification head: use embed or fine-tune it first")
    out = Path(out)
    sources = discover_sources(list(inputs), allow_outside_root=allow_outside_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not sources:
        raise ValueError(f"no ECG records found under {', '.join(inputs)}")
    spec = spec_of(model)
    stride = None if stride_s is None else max(1, int(round(stride_s * spec.target_hz)))
    tasks = [(src, spec.to_dict(), windows, stride, read_kwargs or {}) for src in sources]
    task = model.info.task or "multi_label"
    names = model.info.label_names or ([f"output_{i}" for i in range(model.config.head.num_labels)]
                                       if model.config.head else [])
    rejects: list[tuple[str, str, str]] = []
    writer = None
    written = 0
    pending: list[tuple[str, str, int, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        nonlocal writer, written
        if not pending:
            return
        x = np.concatenate([p[3] for p in pending])
        mask = np.concatenate([p[4] for p in pending])
        model.eval()
        outputs = run_windows(model, x, mask, batch_size=batch_size, layer=layer, engine=engine)
        offset = 0
        for record_id, source, seconds, xr, _ in pending:
            n = len(xr)
            if mode == "predict":
                window_probs = probabilities(task, torch.from_numpy(outputs["logits"][offset:offset + n])).numpy()
                probs = window_probs.max(0) if aggregate == "max" else window_probs.mean(0)
                values = [*np.atleast_1d(probs).tolist(), *np.atleast_1d(_decisions(model, probs)).tolist()]
                header = [f"p_{k}" for k in names] + [f"y_{k}" for k in names]
                extra = [n]
            else:
                emb = outputs["embedding"][offset:offset + n]
                values = (emb.max(0) if aggregate == "max" else emb.mean(0)).tolist()
                header = [f"e{i}" for i in range(len(values))]
                extra = [seconds]
            offset += n
            if writer is None:
                writer = _writer(out, ["record_id", "source", "n_windows" if mode == "predict" else "seconds", *header])
            writer.write([record_id, source, *extra, *[round(v, 6) if isinstance(v, float) else v for v in values]])
            written += 1
        pending.clear()

    pool = mp.get_context("spawn").Pool(workers, initializer=_init_prepare_worker) if workers > 1 else None
    try:
        results = pool.imap(_source_windows, tasks, chunksize=8) if pool else map(_source_windows, tasks)
        for status, payload in tqdm(results, total=len(tasks), disable=not progress, desc=mode, unit="rec",
                                    dynamic_ncols=True):
            if status == "reject":
                rejects.append(payload)
                continue
            pending.append(payload)
            if sum(len(p[3]) for p in pending) >= batch_size:
                flush()
        flush()
    finally:
        if pool is not None:
            pool.terminate()
    if writer is not None:
        writer.close()
    rejects_path = out.with_name(out.name + ".rejects.csv")
    if rejects:
        with atomic_path(rejects_path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["record_id", "source", "reason"])
                w.writerows(rejects)
    else:
        rejects_path.unlink(missing_ok=True)  # a table left by an earlier run would describe other records
        rejects_path = None
    if written == 0:
        if len(rejects) == 1:  # one input: its own reason is the useful message
            record_id, source, reason = rejects[0]
            raise ValueError(reason if reason.startswith(source) else f"{source}: {reason}")
        raise ValueError(f"no record could be processed ({len(rejects)} rejected; see {rejects_path})")
    return BatchJobSummary(out, written, len(rejects), rejects_path)
