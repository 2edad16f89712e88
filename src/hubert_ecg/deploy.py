"""Run an exported ONNX model on raw ECGs with NumPy, SciPy and ONNX Runtime only (no PyTorch).

An ONNX file written by ``hubert-ecg export`` carries its preprocessing spec, labels, thresholds and
task as metadata (see :mod:`hubert_ecg.export`). This module reads them back and applies the same
preprocessing as every ``hubert-ecg`` command, so a deployment that does not install PyTorch still
produces the numbers of :func:`hubert_ecg.predict` / :func:`hubert_ecg.embed` (tested to 1e-4)::

    from hubert_ecg.deploy import OnnxECG
    model = OnnxECG("model.onnx")
    model.predict(signal, fs=500)          # {"probabilities": (L,), "decisions": (L,), "labels": [...]}
    model.embed(signal, fs=500)            # (hidden,) pooled embedding

or, step by step, with your own ONNX runtime::

    meta = read_onnx_metadata("model.onnx")
    x, mask = onnx_inputs(signal, 500, meta["preprocessing"])   # (W, 12 * T) float32, (W, 12 * T) bool
    outputs = session.run(None, {"input_values": x})              # one row per 5 s window

This module imports neither torch nor the model; it needs ``numpy``, ``scipy`` and, for
:class:`OnnxECG`, ``onnxruntime``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import PreprocessSpec, cut_windows, preprocess_signal, window_starts
from .tasks import find_task, get_task

__all__ = ["OnnxECG", "onnx_inputs", "read_onnx_metadata", "standard_order"]

_PREFIX = "hubert_ecg."
_JSON_KEYS = ("labels", "thresholds", "preprocessing", "inputs")


def standard_order(
    signal: np.ndarray, leads: Sequence[str] | None = None, *, allow_missing_leads: bool = False
) -> np.ndarray:
    """One raw record -> float64 (12, samples) in the order I, II, III, aVR, aVL, aVF, V1-V6.

    Without ``leads`` the array must already be in that order ((12, n), or (n, 12), transposed
    here); with ``leads`` (one name per row, aliases allowed; a (samples, leads) array is transposed
    the same way) rows are reordered and missing limb leads derived, as the file readers do. Arrays
    that are not real numbers (bool, complex, strings) are refused."""
    raw = np.asarray(signal)
    if raw.dtype.kind not in "iuf":
        # bool, complex, strings or ragged objects would be coerced into numbers that are not voltages
        raise ValueError(f"expected a numeric (leads, samples) array of voltages, got dtype {raw.dtype}")
    signal = raw.astype(np.float64, copy=False)
    if signal.ndim != 2:
        raise ValueError(f"expected a (leads, samples) array, got shape {signal.shape}")
    if leads is not None and signal.shape[0] != len(leads) and signal.shape[1] == len(leads):
        signal = signal.T  # (samples, leads), as without ``leads``
    if leads is None:
        if signal.shape[0] != 12 and signal.shape[1] == 12:
            signal = signal.T
        if signal.shape[0] != 12:
            raise ValueError(f"expected 12 leads in the order I..V6 (or pass leads=...), got shape {signal.shape}")
        return signal
    from .io import arrange_leads

    ordered, _ = arrange_leads("<array>", signal, list(leads), allow_missing_leads=allow_missing_leads)
    return ordered


def stride_samples(spec: PreprocessSpec, stride_s: float | None) -> int | None:
    """A window stride in seconds -> samples at the model rate (None = one window length, no overlap)."""
    if stride_s is None:
        return None
    if not stride_s > 0:
        raise ValueError(f"stride must be > 0 seconds, got {stride_s!r}")
    return max(1, int(round(stride_s * spec.target_hz)))


def onnx_inputs(
    signal: np.ndarray,
    fs: float,
    spec: PreprocessSpec | dict[str, Any] | None = None,
    *,
    leads: Sequence[str] | None = None,
    windows: str = "sliding",
    stride_s: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A raw record -> the ONNX graph's inputs, exactly as ``hubert-ecg predict/embed`` prepare them.

    Args:
        signal: one record, (12, samples) in the order I..V6, or any order with ``leads``.
        fs: its sampling rate in Hz.
        spec: the ``hubert_ecg.preprocessing`` metadata of the ONNX file (a dict), a
            :class:`~hubert_ecg.preprocess.PreprocessSpec`, or None for the published default.
        windows: ``sliding`` (default: every ``stride_s`` seconds, last window flush with the end),
            ``first`` or ``all_non_overlapping``.

    Returns:
        ``input_values`` float32 (W, 12 * T) and ``attention_mask`` bool (W, 12 * T): one row per
        5 s window; a record shorter than a window is zero-padded with mask False there. Average
        the per-window outputs to get one result per record.
    """
    if fs is None:
        raise ValueError("pass the sampling rate of the record: fs=500")
    if not isinstance(spec, PreprocessSpec):
        spec = PreprocessSpec.from_dict(spec or {})
    prepared = preprocess_signal(standard_order(signal, leads), float(fs), spec)
    starts = window_starts(prepared.shape[1], spec.window_samples, mode=windows, stride=stride_samples(spec, stride_s))
    return cut_windows(prepared, spec, starts)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``hubert_ecg.*`` metadata of an exported file, JSON values decoded.

    Keys: ``version``, ``task``, ``labels``, ``thresholds``, ``preprocessing``, ``inputs``.
    Uses ``onnxruntime`` (or ``onnx`` when onnxruntime is absent).
    """
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        raw = dict(
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            .get_modelmeta()
            .custom_metadata_map
        )
    except ImportError:
        import onnx

        raw = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith(_PREFIX):
            name = key[len(_PREFIX) :]
            out[name] = json.loads(value) if name in _JSON_KEYS else value
    if "preprocessing" not in out:
        raise ValueError(f"{path}: no hubert_ecg metadata (exported by an older version, or not by hubert-ecg)")
    return out


class OnnxECG:
    """An exported model with its metadata: ``predict``/``embed`` one raw record with ONNX Runtime.

    Args:
        path: the ``.onnx`` file from ``hubert-ecg export``.
        windows: how records longer than 5 s are cut (``sliding``, ``first``, ``all_non_overlapping``).
        stride_s: seconds between sliding windows (default: no overlap).
        aggregate: how window outputs are combined, ``mean`` or ``max`` (as ``hubert-ecg predict``).
        threads: ONNX Runtime intra-op threads (default: its own choice).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        windows: str = "sliding",
        stride_s: float | None = None,
        aggregate: str = "mean",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if aggregate not in ("mean", "max"):
            raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
        self.metadata = read_onnx_metadata(path)
        self.spec = PreprocessSpec.from_dict(self.metadata["preprocessing"])
        self.labels: list[str] = list(self.metadata.get("labels") or [])
        thresholds = self.metadata.get("thresholds")
        self.thresholds = np.asarray(thresholds if thresholds else 0.5, dtype=np.float64)
        self.task = self.metadata.get("task", "")
        # the task's decision rule; a task this version does not know is decided at the thresholds
        self._decider = find_task(self.task) or get_task(None)
        self.windows, self.stride_s, self.aggregate = windows, stride_s, aggregate
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = list(self.session.get_inputs()[0].shape)
        # A graph exported with a fixed batch (batch_dynamic=False) takes exactly that many windows
        # per call, and every graph takes only the length it was traced at.
        self._batch = shape[0] if isinstance(shape[0], int) else None
        self._samples = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else None

    def run(self, signal: np.ndarray, fs: float, *, leads: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All graph outputs for every window of one record: name -> (W, ...)."""
        x, mask = onnx_inputs(signal, fs, self.spec, leads=leads, windows=self.windows, stride_s=self.stride_s)
        feeds: dict[str, np.ndarray] = {"input_values": x}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = mask
        elif not mask.all():
            raise ValueError(
                f"record is shorter than one {self.spec.window_s:g} s window and this graph has no "
                "attention_mask input: export it with --with-mask"
            )
        if self._samples is not None and x.shape[1] != self._samples:
            raise ValueError(
                f"this graph takes windows of {self._samples} samples but its preprocessing spec makes "
                f"{x.shape[1]} ({self.spec.window_s:g} s x 12 leads at {self.spec.target_hz:g} Hz); "
                f"export it with --samples {x.shape[1]}"
            )
        if self._batch is None or len(x) == self._batch:
            return dict(zip(self.output_names, self.session.run(None, feeds)))
        # Fixed-batch graph: run full chunks, zero-padding the last; the padding's outputs are dropped.
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(x), self._batch):
            part = {k: v[start : start + self._batch] for k, v in feeds.items()}
            n = len(part["input_values"])
            if n < self._batch:
                part = {
                    k: np.concatenate([v, np.zeros((self._batch - n, *v.shape[1:]), v.dtype)]) for k, v in part.items()
                }
                if "attention_mask" in part:
                    part["attention_mask"][n:] = True  # an all-padding row would pool over no tokens
            chunks.append([out[:n] for out in self.session.run(None, part)])
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(self.output_names)}

    def _pool(self, values: np.ndarray) -> np.ndarray:
        return values.max(0) if self.aggregate == "max" else values.mean(0)

    def embed(self, signal: np.ndarray, fs: float, *, leads: Sequence[str] | None = None) -> np.ndarray:
        """(hidden,) float32: the pooled embedding averaged over the record's windows."""
        return self._pool(self.run(signal, fs, leads=leads)["pooled_embedding"])

    def predict(self, signal: np.ndarray, fs: float, *, leads: Sequence[str] | None = None) -> dict[str, Any]:
        """``probabilities`` (L,) averaged over windows, ``decisions`` (L,) at the stored thresholds, ``labels``."""
        outputs = self.run(signal, fs, leads=leads)
        if "logits" not in outputs:
            raise ValueError("this model has no classification head: use embed()")
        probs = outputs.get("probabilities", outputs["logits"])
        probs = self._pool(probs.reshape(len(probs), -1))
        decisions = self._decider.decisions(probs, self.thresholds)
        return {"probabilities": probs, "decisions": decisions, "labels": self.labels}
