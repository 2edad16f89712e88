"""Model commands: ``info``, ``convert``, ``export``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_command, check_output_file, positive_int, register


def _cmd_info(args: argparse.Namespace) -> None:
    from ..checkpoint import describe, load_model

    summary = describe(load_model(args.checkpoint))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if isinstance(value, list) and len(value) > 12:
            value = f"{value[:12]} ... ({len(value)} in all)"
        if isinstance(value, int) and key.endswith("parameters"):
            value = f"{value:,}"
        print(f"{key:>22}: {value}")


def _cmd_convert(args: argparse.Namespace) -> None:
    import torch

    from ..checkpoint import load_model, save_pretrained
    from ..hub import check_output_directory

    check_output_directory(Path(args.out).expanduser())  # refuse a folder of other files before loading anything
    model = load_model(args.source)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    out = save_pretrained(model, args.out, dtype=dtype)
    print(f"converted {args.source} -> {out} ({model.num_parameters():,} parameters)")


def _cmd_export(args: argparse.Namespace) -> None:
    from ..checkpoint import load_model
    from ..export import export_onnx

    check_output_file(args.out, (".onnx",))  # before the model is loaded
    model = load_model(args.checkpoint)
    path = export_onnx(model, args.out, samples=args.samples, opset=args.opset, with_mask=args.with_mask)
    print(f"exported {args.checkpoint} -> {path} (checked against PyTorch with onnxruntime)")


@register
def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "info", "describe a checkpoint: size, parameters, heads, codebooks, labels, preprocessing", _cmd_info
    )
    p.add_argument(
        "checkpoint",
        help="our model directory, a published HF directory or .pt, or a HF model id "
        "(owner/name, or owner/name@revision to pin a branch, tag or commit)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add_command(
        sub,
        "convert",
        "convert any accepted checkpoint to our Hugging Face-compatible folder "
        "(config.json + model.safetensors + README.md model card)",
        _cmd_convert,
    )
    p.add_argument(
        "source", help="published HF directory, .pt file, HF model id (owner/name[@revision]) or our directory"
    )
    p.add_argument(
        "--out",
        required=True,
        help="output directory: new, empty, or one holding a hubert-ecg model "
        "(its model files are replaced; other files are kept)",
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="storage dtype of the weights"
    )

    p = add_command(
        sub, "export", "export a model to ONNX (embeddings, and logits/probabilities with a head)", _cmd_export
    )
    p.add_argument("checkpoint", help="model to export: our dir, published HF dir or .pt, or a HF model id")
    p.add_argument(
        "--out",
        required=True,
        help="output .onnx file (labels, thresholds, preprocessing spec, task and "
        "package version are stored in its metadata)",
    )
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (ONNX only for now)")
    p.add_argument(
        "--samples", type=positive_int, default=6000, help="input length the graph is traced at (batch is free)"
    )
    p.add_argument("--with-mask", action="store_true", help="add an attention_mask input for padded records")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version of the graph")
