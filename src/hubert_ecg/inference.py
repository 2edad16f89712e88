"""The inference engine under :mod:`hubert_ecg.pipeline`: windows in, model outputs out; and file jobs.

:func:`run_windows` forwards model windows of any number of records in device batches;
:func:`predict_files` reads every record under some folders/files/manifests and writes one row per
record (CSV, Parquet, or ``.npy`` for embeddings). In-memory arrays go through
:class:`hubert_ecg.pipeline.ECGPipeline` (or :func:`hubert_ecg.embed` / :func:`hubert_ecg.predict`).

The checkpoint's own preprocessing spec is replayed (the published pipeline when a checkpoint
carries none). Records longer than the 5 s window are cut into windows (sliding by default, the
last one flush with the end) whose outputs are aggregated by mean or max; shorter ones are padded
at the end of each lead with an attention mask, down to ``spec.min_window_s`` (1.5 s), below
which a clear error is raised.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import written_by_us
from .deploy import standard_order, stride_samples  # noqa: F401  (torch-free; re-exported here)
from .model import HubertECG
from .preprocess import PreprocessSpec, cut_windows, window_starts
from .reading import Accepted, ReadTask, Rejected, RejectsTable, Unscorable, missing_leads, read_one, worker_pool
from .tasks import get_task, probabilities  # noqa: F401  (probabilities re-exported)


def spec_of(model: HubertECG) -> PreprocessSpec:
    """The preprocessing the model was trained with (published default when unknown)."""
    if model.info.preprocessing:
        return PreprocessSpec.from_dict(model.info.preprocessing)
    return PreprocessSpec()


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
        raise ValueError(
            f"layer {layer!r} does not exist: this model has hidden states 0..{n} (0 = encoder input, {n} = last layer)"
        )


@torch.no_grad()
def run_windows(
    model: HubertECG,
    x: np.ndarray,
    mask: np.ndarray,
    *,
    batch_size: int = 64,
    layer: int | None = None,
    tokens: bool = False,
    engine: str = "eager",
    runners: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
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
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
        mb_np = mask[start : start + batch_size]
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
    return get_task(task).decisions(probs, thresholds)


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
    skipped: str = ""  # files seen but not records, counted by reason ("" when none)
    unscored: int = 0  # rows written with a quality reason and empty probabilities
    calibration: str = ""  # the saved post-hoc calibration applied to the probabilities ("" when none)


OUTPUT_SUFFIXES = (".csv", ".parquet", ".npy")


class _TableSink:
    """The output table of one job, written atomically when closed.

    One row per record: id columns (``record_id``, ``source``, one count) then a value vector.
    CSV: one column per value (``columns``). Parquet: id columns plus, for embeddings, ONE
    fixed-size-list float32 column ``embedding`` (a 768-wide embedding is one column, not 768
    float64 ones); for predictions, one float column per value. ``.npy`` (embeddings only): the
    (N, H) float32 matrix, with the id columns in ``<stem>.ids.csv`` beside it (same row order).
    """

    def __init__(self, path: Path, id_columns: list[str], columns: list[str], *, vector: str | None = None) -> None:
        if path.suffix not in OUTPUT_SUFFIXES:
            raise ValueError(
                f"{path}: unsupported output format {path.suffix or '(no suffix)'!r}; use {', '.join(OUTPUT_SUFFIXES)}"
            )
        if path.suffix == ".npy" and vector is None:
            raise ValueError(f"{path}: .npy output holds embeddings only; write predictions to .csv or .parquet")
        if path.suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ValueError("writing Parquet needs `pip install pyarrow` (or use a .csv output)") from None
        self.path, self.id_columns, self.columns, self.vector = path, id_columns, columns, vector
        self.ids: list[list[Any]] = []
        self.values: list[np.ndarray] = []

    def add(self, ids: list[Any], values: np.ndarray) -> None:
        self.ids.append(ids)
        self.values.append(np.asarray(values))

    @property
    def ids_path(self) -> Path:
        return self.path.with_suffix(".ids.csv")

    def close(self) -> None:
        from .atomic import atomic_path

        values = np.stack(self.values) if self.values else np.zeros((0, len(self.columns)))
        with atomic_path(self.path) as tmp:
            if self.path.suffix == ".csv":
                self._write_csv(tmp, self.id_columns + self.columns, values)
            elif self.path.suffix == ".parquet":
                self._write_parquet(tmp, values)
            else:
                with open(tmp, "wb") as fh:
                    np.save(fh, values.astype(np.float32))
        if self.path.suffix == ".npy":
            with atomic_path(self.ids_path) as tmp:
                self._write_csv(tmp, self.id_columns, None)

    def _write_csv(self, tmp: Path, header: list[str], values: np.ndarray | None) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i, ids in enumerate(self.ids):
                row = [] if values is None else [_cell(v) for v in values[i].tolist()]
                w.writerow([*ids, *row])

    def _write_parquet(self, tmp: Path, values: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = {name: [ids[j] for ids in self.ids] for j, name in enumerate(self.id_columns)}
        if self.vector is not None:
            flat = pa.array(values.astype(np.float32).reshape(-1), type=pa.float32())
            table[self.vector] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1] if values.ndim == 2 else 0)
        else:
            for j, name in enumerate(self.columns):
                column = values[:, j] if len(values) else np.zeros(0)
                decision = name.startswith("y_") and not name.startswith("y_true_")
                # NaN (a record that could not be scored) is a null cell, never a number.
                table[name] = (
                    pa.array([None if np.isnan(v) else int(v) for v in column], type=pa.int64())
                    if decision
                    else pa.array(column, from_pandas=True)
                )
        pq.write_table(pa.table(table), str(tmp))


def _cell(value: float) -> Any:
    """CSV cell: blank for NaN, integral values without ".0" (decisions, 0/1 labels), else 6 decimals."""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        return int(value) if value.is_integer() else round(value, 6)
    return value


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read an ``embed`` output back: (record ids, (N, H) float32) from .parquet, .npy (+ .ids.csv) or .csv."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
        ids = [str(v) for v in table.column("record_id").to_pylist()]
        column = table.column("embedding").combine_chunks()
        width = column.type.list_size
        return ids, column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)
    if path.suffix == ".npy":
        with open(path.with_suffix(".ids.csv"), newline="") as fh:
            ids = [row["record_id"] for row in csv.DictReader(fh)]
        return ids, np.load(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("e") and c[1:].isdigit()]
    return [r["record_id"] for r in rows], np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float32)


def _record_windows(
    record: Any, prepared: np.ndarray, *, spec: PreprocessSpec, windows: str, stride: int | None
) -> tuple[str, str, int, np.ndarray, np.ndarray, str, str]:
    """Post-step of the reading worker: one preprocessed record -> its model windows and the row's id cells.

    (record id, source, seconds, windows, window masks, quality, missing leads); a record shorter than
    ``spec.min_window_s`` raises PreprocessError here, in the worker, and becomes a reject.
    """
    from .io import quality_label

    starts = window_starts(prepared.shape[1], spec.window_samples, mode=windows, stride=stride)
    x, mask = cut_windows(prepared, spec, starts)
    seconds = int(np.ceil(record.signal.shape[1] / record.fs))
    return record.record_id, record.source, seconds, x, mask, quality_label(record), missing_leads(record)


def _truth_columns(model: HubertECG, labels: Any) -> list[int] | None:
    """Column of ``labels`` (a :class:`~hubert_ecg.store.LabelTable`) for each model output, or None."""
    if labels is None:
        return None
    names = label_names(model)
    missing = [n for n in names if n not in labels.names]
    if missing:
        raise ValueError(
            f"labels table has no column for the model's output(s) {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (its columns: {', '.join(labels.names[:8])})"
        )
    return [labels.names.index(n) for n in names]


def predict_files(
    model: HubertECG,
    inputs: Sequence[str],
    out: str | Path,
    *,
    mode: str = "predict",
    layer: int | None = None,
    windows: str = "sliding",
    aggregate: str = "mean",
    stride_s: float | None = None,
    batch_size: int = 64,
    read_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    allow_outside_root: bool = False,
    engine: str = "eager",
    workers: int = 1,
    labels: Any = None,
    use_saved_calibration: bool = True,
) -> BatchJobSummary:
    """Predict (or embed) every record under ``inputs``; one output row per record (.csv, .parquet, or .npy
    for embeddings; layouts in :class:`_TableSink`).

    Records are read and cut into windows by ``workers`` processes, and windows of several records
    share a forward batch, so a GPU is not left waiting on one record at a time. Bad records are
    skipped and listed with their reason in ``<out>.rejects.csv``; the job goes on.
    ``labels`` (a :class:`~hubert_ecg.store.LabelTable` with the model's label names as columns) adds
    ``y_true_<label>`` columns to predictions (blank for records the table lacks).
    ``allow_outside_root``: see :func:`hubert_ecg.io.discover_sources` (manifest path safety).
    A post-hoc calibration saved in the model (``evaluate --calibrate ... --save-calibration``) is applied to
    the probabilities, as ``evaluate`` applies it, unless ``use_saved_calibration`` is False; decisions stay
    those of the model's thresholds, which were tuned on uncalibrated validation probabilities.
    """
    opts = FileJobOptions(
        mode=mode,
        layer=layer,
        windows=windows,
        aggregate=aggregate,
        stride_s=stride_s,
        batch_size=batch_size,
        read_kwargs=read_kwargs or {},
        progress=progress,
        allow_outside_root=allow_outside_root,
        engine=engine,
        workers=workers,
        labels=labels,
        use_saved_calibration=use_saved_calibration,
    )
    return _run_file_job(model, inputs, Path(out), opts)


def _run_file_job(model: HubertECG, inputs: Sequence[str], out: Path, opts: FileJobOptions) -> BatchJobSummary:
    """:func:`predict_files` on grouped options: check, find the records, run the job, write its tables."""
    if opts.mode == "predict" and model.config.head is None:
        raise ValueError("this model has no classification head: use embed or fine-tune it first")
    check_layer(model, opts.layer)
    truth = _truth_columns(model, opts.labels) if opts.mode == "predict" else None
    sink = _output_sink(model, out, opts.mode, truth is not None)
    sources, account = _find_sources(inputs, opts.allow_outside_root)
    _check_output_path(out, sources, sink)
    out.parent.mkdir(parents=True, exist_ok=True)
    job = _FileJob(model, sink, opts, truth)
    rejects = RejectsTable(out.with_name(out.name + ".rejects.csv"))
    job.run(_read_tasks(model, sources, opts), rejects)
    rejects_path = rejects.write(remove_if_empty=True)
    job.check_some_written(rejects, rejects_path)
    sink.close()
    # After the output: a full disk must fail on the table itself, and a failed job leaves no listing.
    skipped_path = account.write_csv(out.with_name(out.name + ".skipped.csv"))
    return BatchJobSummary(
        out,
        job.written,
        len(rejects),
        rejects_path,
        skipped=account.summary() + (f" (listed in {skipped_path})" if skipped_path else ""),
        unscored=job.unscored,
        calibration=str(job.calibration["method"]) if job.calibration else "",
    )


@dataclass(frozen=True)
class FileJobOptions:
    """The keyword arguments of :func:`predict_files` (see there), grouped."""

    mode: str = "predict"
    layer: int | None = None
    windows: str = "sliding"
    aggregate: str = "mean"
    stride_s: float | None = None
    batch_size: int = 64
    read_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    allow_outside_root: bool = False
    engine: str = "eager"
    workers: int = 1
    labels: Any = None
    use_saved_calibration: bool = True


def _output_sink(model: HubertECG, out: Path, mode: str, with_truth: bool) -> _TableSink:
    """The output table: probabilities, decisions (and truth) per record, or one embedding per record."""
    names = label_names(model)
    if mode == "predict":
        columns = [f"p_{k}" for k in names] + [f"y_{k}" for k in names] + [f"y_true_{k}" for k in names if with_truth]
        return _TableSink(out, ["record_id", "source", "n_windows", "quality", "missing_leads"], columns)
    return _TableSink(
        out,
        ["record_id", "source", "seconds", "missing_leads"],
        [f"e{i}" for i in range(model.config.hidden_size)],
        vector="embedding",
    )


def _find_sources(inputs: Sequence[str], allow_outside_root: bool) -> tuple[list[Any], Any]:
    """The records under ``inputs`` and the account of files seen but not taken (for ``<out>.skipped.csv``)."""
    from .io import InputAccount, discover_sources

    account = InputAccount()
    sources = discover_sources(list(inputs), allow_outside_root=allow_outside_root, account=account)
    if not sources:
        raise ValueError(
            f"no ECG records found under {', '.join(inputs)}" + (f" ({account.summary()})" if account.skipped else "")
        )
    return sources, account


def _check_output_path(out: Path, sources: list[Any], sink: _TableSink) -> None:
    """Refuse an output that is one of the input records, or an existing file this package did not write.

    Nothing a user made is ever overwritten: ``predict --out records/r1.csv`` over a CSV record used to
    replace the ECG with the predictions.
    """
    ours = {p.resolve() for p in (out, sink.ids_path, out.with_name(out.name + ".rejects.csv"))}
    clash = next((s.path for s in sources if Path(s.path).resolve() in ours), None)
    if clash is not None:
        raise ValueError(f"{out}: would overwrite the input record {clash}; choose another --out")
    if out.exists() and not written_by_us(out):
        raise ValueError(
            f"{out}: exists and is not a hubert-ecg predict/embed output; choose another --out (nothing was changed)"
        )


def _read_tasks(model: HubertECG, sources: list[Any], opts: FileJobOptions) -> list[ReadTask]:
    """One worker task per record: the model's preprocessing, then its windows (:func:`_record_windows`)."""
    spec = spec_of(model)
    post = functools.partial(
        _record_windows, spec=spec, windows=opts.windows, stride=stride_samples(spec, opts.stride_s)
    )
    return [ReadTask(src, spec.to_dict(), opts.read_kwargs, post) for src in sources]


class _FileJob:
    """Reads records (optionally in worker processes), batches their windows across records, writes rows."""

    def __init__(self, model: HubertECG, sink: _TableSink, opts: FileJobOptions, truth: list[int] | None) -> None:
        self.model, self.sink, self.opts, self.truth = model, sink, opts, truth
        self.mode, self.aggregate, self.labels = opts.mode, opts.aggregate, opts.labels
        self.task = model.info.task or "multi_label"
        saved = (model.info.extra or {}).get("calibration") if opts.mode == "predict" else None
        self.calibration: dict[str, Any] | None = saved if opts.use_saved_calibration and saved else None
        self.runners: dict[str, Any] = {}
        # (record id, source, seconds, windows, window masks, quality, missing leads) per record read
        self.pending: list[tuple[str, str, int, np.ndarray, np.ndarray, str, str]] = []
        self.written = 0
        self.unscored = 0

    def run(self, tasks: list[ReadTask], rejects: RejectsTable) -> None:
        from tqdm.auto import tqdm

        with worker_pool(self.opts.workers) as pool:
            results = pool.imap(read_one, tasks, chunksize=8)
            bar = tqdm(
                results,
                total=len(tasks),
                disable=not self.opts.progress,
                desc=self.mode,
                unit="rec",
                dynamic_ncols=True,
            )
            for result in bar:
                if isinstance(result, Rejected):
                    src = result.source
                    rejects.add(src.record_id, src.path, result.reason)
                elif isinstance(result, Unscorable):
                    self.unscorable(result, rejects)
                elif isinstance(result, Accepted):
                    self.pending.append(result.value)
                    if sum(len(p[3]) for p in self.pending) >= self.opts.batch_size:
                        self.flush()
            self.flush()

    def unscorable(self, result: Unscorable, rejects: RejectsTable) -> None:
        """A record read but physically implausible: a row with the reason (predict) or a reject (embed)."""
        record_id, source = result.record_id, result.record_source
        if self.mode != "predict":  # an embedding of a flat line means nothing: list it
            rejects.add(record_id, source, f"{source}: not scorable: {result.reason}")
            return
        # A row with the reason and empty probabilities (not 0.5, not the decision threshold).
        self.sink.add(
            [record_id, source, 0, result.quality, result.missing_leads], np.full(len(self.sink.columns), np.nan)
        )
        self.written += 1
        self.unscored += 1

    def check_some_written(self, rejects: RejectsTable, rejects_path: Path | None) -> None:
        """Fail the job when no record could be used (one input: its own reason), or none could be scored."""
        if self.written == 0:
            if len(rejects) == 1:  # one input: its own reason is the useful message
                record_id, source, reason = rejects.rows[0]
                raise ValueError(reason if reason.startswith(source) else f"{source}: {reason}")
            raise ValueError(f"no record could be processed ({len(rejects)} rejected; see {rejects_path})")
        if self.written == self.unscored:  # every record read was implausible: nothing was scored
            raise ValueError(f"no record could be scored ({self.unscored} not scorable, {len(rejects)} rejected)")

    def _calibrated(self, probs: np.ndarray) -> np.ndarray:
        if self.calibration is None:
            return probs
        from .calibration import apply_calibration

        return apply_calibration(self.calibration, probs[None])[0]

    def flush(self) -> None:
        if not self.pending:
            return
        x = np.concatenate([p[3] for p in self.pending])
        mask = np.concatenate([p[4] for p in self.pending])
        self.model.eval()
        outputs = run_windows(
            self.model,
            x,
            mask,
            batch_size=self.opts.batch_size,
            layer=self.opts.layer,
            engine=self.opts.engine,
            runners=self.runners,
        )
        offset = 0
        for record_id, source, seconds, xr, _, quality, missing in self.pending:
            n = len(xr)
            if self.mode == "predict":
                window_probs = probabilities(
                    self.task, torch.from_numpy(outputs["logits"][offset : offset + n])
                ).numpy()
                probs = np.atleast_1d(window_probs.max(0) if self.aggregate == "max" else window_probs.mean(0))
                # Decisions at the model's thresholds, which were tuned on uncalibrated probabilities.
                values = [self._calibrated(probs), _decisions(self.model, probs).astype(np.float64)]
                if self.truth is not None:
                    row = self.labels.lookup(record_id, source)
                    values.append(np.full(len(self.truth), np.nan) if row is None else row[self.truth])
                self.sink.add([record_id, source, n, quality, missing], np.concatenate(values))
            else:
                emb = outputs["embedding"][offset : offset + n]
                self.sink.add(
                    [record_id, source, seconds, missing], emb.max(0) if self.aggregate == "max" else emb.mean(0)
                )
            offset += n
            self.written += 1
        self.pending.clear()
