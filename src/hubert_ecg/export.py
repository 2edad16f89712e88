"""Export a HuBERT-ECG model to ONNX, checked against PyTorch with ONNX Runtime.

The exported graph maps flattened 12-lead windows to the encoder output and, when the model has a
fine-tuning head, to its logits and probabilities:

    input_values    float32 (B, L)        L = ``samples`` (6000 = 5 s x 12 leads at 100 Hz)
    attention_mask  bool    (B, L)        only with ``with_mask=True``; True = real signal
    -> last_hidden_state  float32 (B, T, H)    T = 93 for L = 6000
    -> pooled_embedding   float32 (B, H)       mean of the last hidden states over valid tokens
    -> logits             float32 (B, num_labels)   models with a head only
    -> probabilities      float32 (B, num_labels)   sigmoid, or softmax for multi_class; not for regression

The file carries what a deployment needs to reproduce our numbers, as ONNX ``metadata_props``
(string keys, JSON values; read them with :func:`hubert_ecg.deploy.read_onnx_metadata` or
``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map``):

    hubert_ecg.version      package version that exported the file
    hubert_ecg.task         multi_label | multi_class | binary | regression | "" (backbone)
    hubert_ecg.labels       JSON list of output names, in logit order
    hubert_ecg.thresholds   JSON list of decision thresholds (null: 0.5)
    hubert_ecg.preprocessing  JSON :class:`~hubert_ecg.preprocess.PreprocessSpec` (filter, rates, scaling, window)
    hubert_ecg.inputs       JSON: input names, samples, leads order, sampling rate of the input

:func:`hubert_ecg.deploy.onnx_inputs` turns a raw record into ``input_values``/``attention_mask``
with NumPy and SciPy only (no PyTorch), applying that spec.

``onnx`` and ``onnxruntime`` are optional dependencies (``pip install hubert-ecg[onnx]``) and are
imported only when an export runs.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .model import HubertECG

INPUT_NAMES = ("input_values", "attention_mask")
METADATA_PREFIX = "hubert_ecg."


class ExportError(ValueError):
    """An export that cannot be made or does not reproduce PyTorch; the message says which and why."""


def probability_kind(model: HubertECG) -> str | None:
    """How logits become probabilities: ``"softmax"`` (multi_class), ``"sigmoid"``, or None (regression / no head)."""
    from .tasks import get_task

    return None if model.classifier is None else get_task(model.info.task).activation


def to_probabilities(logits: Tensor, kind: str | None) -> Tensor:
    """(B, num_labels) logits -> probabilities of the same shape; ``kind`` from :func:`probability_kind`."""
    if kind == "softmax":
        return logits.softmax(-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"no probabilities for probability kind {kind!r}")


class _ExportGraph(nn.Module):
    """Plain-tuple outputs for the tracer: (last_hidden_state, pooled_embedding[, logits[, probabilities]])."""

    def __init__(self, model: HubertECG, with_mask: bool) -> None:
        super().__init__()
        self.model = model
        self.with_mask = with_mask
        self.kind = probability_kind(model)

    def forward(self, input_values: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model(input_values, attention_mask if self.with_mask else None)
        pooled = HubertECG.pool(out.last_hidden_state, out.token_mask)
        if out.logits is None:
            return out.last_hidden_state, pooled
        if self.kind is None:
            return out.last_hidden_state, pooled, out.logits
        return out.last_hidden_state, pooled, out.logits, to_probabilities(out.logits, self.kind)


def output_names(model: HubertECG) -> list[str]:
    """Names of the graph outputs, in order, for this model."""
    names = ["last_hidden_state", "pooled_embedding"]
    if model.classifier is not None:
        names.append("logits")
        if probability_kind(model) is not None:
            names.append("probabilities")
    return names


def export_onnx(
    model: HubertECG,
    path: str | Path,
    *,
    batch_dynamic: bool = True,
    samples: int = 6000,
    opset: int = 17,
    with_mask: bool = False,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` as an ONNX graph to ``path`` and return the path.

    ``samples`` fixes the input length L (the graph is traced at that length); ``batch_dynamic``
    leaves the batch axis free. ``with_mask`` adds the (B, L) bool ``attention_mask`` input for
    padded records. With ``verify`` (default) the file is run with ONNX Runtime on a batch of
    random signals and every output must lie within ``atol`` of float32 PyTorch, else
    :class:`ExportError`. The model is exported from a float32 CPU copy; the original is untouched.
    """
    path = Path(path)
    if samples < model.config.receptive_field:
        raise ExportError(
            f"{path}: samples={samples} is shorter than the conv stem's receptive field "
            f"({model.config.receptive_field})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Export a float32 CPU copy in eval mode: the tracer would otherwise bake in dropout, and
    # torch.onnx.export restores the *wrapper's* training flag on every submodule afterwards.
    source = _cpu_float_copy(model)
    graph = _ExportGraph(source, with_mask).eval()
    example = _example_inputs(2, samples, with_mask)
    names = output_names(source)
    inputs = list(INPUT_NAMES[: 1 + int(with_mask)])
    dynamic_axes = {name: {0: "batch"} for name in inputs + names} if batch_dynamic else None
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=inputs,
            output_names=names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    _finish_file(path, onnx_metadata(source, samples=samples, with_mask=with_mask))
    if verify:
        # A batch size other than the traced one proves the batch axis really is free.
        verify_onnx(graph, path, batch=3 if batch_dynamic else 2, samples=samples, atol=atol)
    return path


def onnx_metadata(model: HubertECG, *, samples: int = 6000, with_mask: bool = False) -> dict[str, str]:
    """The ``metadata_props`` written into an export (string values; JSON where structured)."""
    import json

    from . import __version__
    from .preprocess import LEAD_NAMES, PreprocessSpec

    spec = PreprocessSpec.from_dict(model.info.preprocessing or {}).to_dict()  # every field, defaults filled
    names = list(model.info.label_names) or (
        [f"output_{i}" for i in range(model.config.head.num_labels)] if model.config.head else []
    )
    inputs = {
        "names": list(INPUT_NAMES[: 1 + int(with_mask)]),
        "samples": samples,
        "leads": list(LEAD_NAMES),
        "layout": "leads end to end: input_values[:, i*T:(i+1)*T] is lead i",
        "fs": spec.get("target_hz"),
    }
    values = {
        "version": __version__,
        "task": model.info.task or ("" if model.classifier is None else "multi_label"),
        "labels": json.dumps(names),
        "thresholds": json.dumps(model.info.thresholds),
        "preprocessing": json.dumps(spec, sort_keys=True),
        "inputs": json.dumps(inputs),
    }
    return {METADATA_PREFIX + key: value for key, value in values.items()}


def _finish_file(path: Path, props: dict[str, str]) -> None:
    """One load/save of the traced file: inline aliased initializers, then write the metadata."""
    import onnx

    model = onnx.load(str(path))
    _inline_shared_initializers(model)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def onnx_session(path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
    """An ONNX Runtime session on CUDA (when ``device`` is CUDA and the provider exists) or CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def verify_onnx(graph: _ExportGraph, path: Path, *, batch: int, samples: int, atol: float) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on random input; raises past ``atol``."""
    with_mask = getattr(graph, "with_mask", False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, samples, generator=generator)
    feeds = {"input_values": x.numpy()}
    args: tuple[Tensor, ...] = (x,)
    if with_mask:
        mask = torch.ones(batch, samples, dtype=torch.bool)
        mask[-1, samples // 2 :] = False  # one padded record exercises the mask path
        feeds["attention_mask"] = mask.numpy()
        args = (x, mask)
    session = onnx_session(path)
    got = session.run(None, feeds)
    with torch.inference_mode():
        expected = graph(*args)
    worst = 0.0
    for name, a, b in zip(output_names(graph.model), got, expected):
        diff = float(np.abs(a - b.numpy()).max())
        if name == "last_hidden_state" and with_mask:
            # Hidden states at padded tokens are unconstrained; compare real tokens only.
            valid = graph.model.token_mask(args[1]).numpy()
            diff = float(np.abs(a - b.numpy())[valid].max())
        if not diff <= atol:
            raise ExportError(f"{path}: ONNX Runtime output {name} differs from PyTorch by {diff:.3g} (> {atol:g})")
        worst = max(worst, diff)
    return worst


def _inline_shared_initializers(model: Any) -> None:
    """Replace ``Identity(initializer)`` nodes with a copy of the initializer, in place.

    The TorchScript exporter stores parameters with equal values once and aliases the others
    through Identity nodes (freshly initialised norms are all ones); ONNX Runtime 1.32's graph
    optimiser then rejects the model ("Node input ... is not a graph input"). Plain copies are
    what every runtime accepts; they cost a few KB of norm weights.
    """
    import onnx

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    aliases = [node for node in graph.node if node.op_type == "Identity" and node.input[0] in initializers]
    if not aliases:
        return
    for node in aliases:
        copy_ = onnx.TensorProto()
        copy_.CopyFrom(initializers[node.input[0]])
        copy_.name = node.output[0]
        graph.initializer.append(copy_)
        graph.node.remove(node)


def _example_inputs(batch: int, samples: int, with_mask: bool) -> tuple[Tensor, ...]:
    x = torch.randn(batch, samples, generator=torch.Generator().manual_seed(0))
    if not with_mask:
        return (x,)
    return x, torch.ones(batch, samples, dtype=torch.bool)


def _cpu_float_copy(model: HubertECG) -> HubertECG:
    return copy.deepcopy(model).to("cpu", torch.float32).eval()


def export_to_temporary(
    model: HubertECG, *, samples: int = 6000, with_mask: bool = False
) -> tempfile.TemporaryDirectory:
    """Export into a fresh temporary directory (``<dir>/model.onnx``) without the parity run; caller cleans up."""
    directory = tempfile.TemporaryDirectory(prefix="hubert_ecg_onnx_")
    export_onnx(model, Path(directory.name) / "model.onnx", samples=samples, with_mask=with_mask, verify=False)
    return directory
