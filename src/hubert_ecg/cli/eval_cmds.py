"""Evaluation and inference commands: ``evaluate``, ``predict``, ``embed``, ``demo``."""

from __future__ import annotations

import argparse

from . import add_command, add_read_options, read_kwargs, register


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ..evaluate import evaluate

    summary = evaluate(args.checkpoint, args.store, args.out, split=args.split, windows=args.tta, n_crops=args.n_crops,
                       aggregate=args.aggregate, stride=args.stride, batch_size=args.batch_size,
                       n_bootstrap=args.bootstrap, seed=args.seed, device=args.device)
    macro = summary["macro"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in macro.items() if k in ("auroc", "auprc", "f1", "mae", "r2"))
    print(f"{summary['records']} records: {shown}")
    if summary["undefined_labels"]:
        print(f"{len(summary['undefined_labels'])} labels without positives left out of the macro averages")
    print(f"report: {summary['report']}")


def _load(args: argparse.Namespace):  # noqa: ANN202
    from ..checkpoint import load_model

    device = args.device if args.device != "auto" else ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    return load_model(args.checkpoint, device=device)


def _cmd_predict(args: argparse.Namespace) -> None:
    from ..inference import predict_files

    summary = predict_files(_load(args), args.inputs, args.out, mode="predict", windows=args.windows,
                            aggregate=args.aggregate, stride_s=args.stride, batch_size=args.batch_size,
                            read_kwargs=read_kwargs(args), progress=not args.quiet,
                            allow_outside_root=args.allow_absolute_paths, engine=args.engine,
                            workers=args.workers)
    _print_summary(summary)


def _cmd_embed(args: argparse.Namespace) -> None:
    from ..inference import predict_files

    summary = predict_files(_load(args), args.inputs, args.out, mode="embed", layer=args.layer, windows=args.windows,
                            aggregate=args.aggregate, stride_s=args.stride, batch_size=args.batch_size,
                            read_kwargs=read_kwargs(args), progress=not args.quiet,
                            allow_outside_root=args.allow_absolute_paths, engine=args.engine,
                            workers=args.workers)
    _print_summary(summary)


def _print_summary(summary) -> None:  # noqa: ANN001
    print(f"wrote {summary.written} records to {summary.out}"
          + (f"; {summary.rejected} rejected (reasons in {summary.rejects_path})" if summary.rejected else ""))


def _cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    report = run_demo(args.out, data=args.data, records=args.records, quick=args.quick)
    print(f"\ndemo finished: open {report}")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="model: our dir, published HF dir or .pt, or a HF model id")
    p.add_argument("inputs", nargs="+", help="files, folders or a manifest, in any supported format")
    p.add_argument("--out", required=True, help="output table (.csv or .parquet)")
    p.add_argument("--windows", choices=["sliding", "first", "all_non_overlapping"], default="sliding",
                   help="how records longer than 5 s are cut")
    p.add_argument("--stride", type=float, help="seconds between sliding windows (default: 5, no overlap)")
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="combine the windows of a record")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (across records)")
    p.add_argument("--workers", type=int, default=1, help="processes that read and preprocess records")
    add_read_options(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="let manifest entries point outside the manifest's folder (absolute or '..' paths)")
    p.add_argument("--engine", choices=["eager", "auto", "bf16", "int8", "onnx", "compile"], default="eager",
                   help="eager = exact float32; auto = bf16 on GPUs and CPUs with AMX/AVX512-BF16; int8 = dynamic "
                        "quantisation (CPU); onnx = ONNX Runtime. Accuracy costs: benchmarks/RESULTS.md")
    p.add_argument("--quiet", action="store_true")


@register
def _add(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", "metrics with bootstrap CIs, TTA, plots and a report for a fine-tuned model",
                    _cmd_evaluate)
    p.add_argument("checkpoint", help="fine-tuned model (e.g. RUN/best)")
    p.add_argument("store", help="labelled store")
    p.add_argument("--split", default="test", help="store split to evaluate ('' = every row)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tta", choices=["first", "random", "sliding"], default="first",
                   help="windows per record: the first 5 s, N random 5 s crops, or all sliding windows")
    p.add_argument("--n-crops", type=int, default=3, help="random crops per record for --tta random")
    p.add_argument("--stride", type=int, help="samples between sliding windows (default: one window)")
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs (0 = none)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    p = add_command(sub, "predict", "probabilities and decisions for every record (any length, any format)",
                    _cmd_predict)
    _add_inference_args(p)

    p = add_command(sub, "embed", "embeddings of a chosen layer for every record", _cmd_embed)
    _add_inference_args(p)
    p.add_argument("--layer", type=int, help="hidden-state index (0 = encoder input, i = layer i; default last)")

    p = add_command(sub, "demo", "the main job end to end on synthetic data (or DATA): prepare -> pre-train -> "
                                 "fine-tune -> evaluate -> report", _cmd_demo)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--data", help="your own labelled records: a folder with records and labels.csv")
    p.add_argument("--records", type=int, default=400, help="synthetic records to generate")
    p.add_argument("--quick", action="store_true", help="smallest settings (for tests)")
