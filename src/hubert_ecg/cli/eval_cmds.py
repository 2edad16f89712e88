"""Evaluation and inference commands: ``evaluate``, ``compare``, ``explain``, ``predict``, ``embed``, ``demo``."""

from __future__ import annotations

import argparse
from typing import Any

from . import (
    add_command,
    add_device_option,
    add_read_options,
    check_output_file,
    check_output_folder,
    non_negative_int,
    positive_float,
    positive_int,
    read_kwargs,
    register,
)


def _csv_list(text: str) -> list[str]:
    """Comma-separated names (``sex,age,site``); empty items are a usage error."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return items


def _lead_sets(text: str) -> list[str]:
    """One lead set (a name: ``limb``, ``precordial``, ``I``, ``II``; or leads ``I,II``), several separated by ';'."""
    from ..preprocess import parse_lead_set

    parts = [p.strip() for p in text.split(";") if p.strip()]
    for part in parts:
        try:
            parse_lead_set(part)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parts


def _print_eval_summary(summary: dict[str, Any]) -> None:
    import math

    macro = summary["macro"]
    # NaN means undefined (no label with both classes): say so, never print a number-like 'nan'.
    shown = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else f"{k} undefined"
        for k, v in macro.items()
        if k in ("auroc", "auprc", "f1", "brier", "mae", "r2")
    )
    print(f"{summary['records']} records: {shown}")
    undefined = summary["undefined_labels"]
    if undefined:
        print(
            f"{len(undefined)} label(s) without both classes in these records (no positive or no negative), "
            f"undefined and left out of the macro averages: {', '.join(map(str, undefined[:10]))}"
        )
    print(f"report: {summary['report']}")


class _OneLineWarnings:
    """Show the library's warnings (seen records, copies of training records, small samples, blank labels) as
    ``hubert-ecg: warning: ...`` lines on stderr, not as Python's two-line ``file:line: UserWarning``."""

    def __enter__(self) -> None:
        import warnings

        self._context = warnings.catch_warnings(record=True)
        self._caught = self._context.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: Any) -> None:
        import sys

        self._context.__exit__(*exc)
        seen = set()
        for w in self._caught:
            text = str(w.message)
            if text not in seen:
                seen.add(text)
                print(f"hubert-ecg: warning: {text}", file=sys.stderr)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    parser = args.evaluate_parser
    if args.predictions or args.labels:
        _evaluate_predictions(args)
        return
    if not (args.checkpoint and args.store):
        parser.error("give CHECKPOINT STORE (or --predictions FILE --labels FILE)")
    if args.save_calibration and not args.calibrate:
        parser.error("--save-calibration needs --calibrate")
    check_output_folder(args.out)
    with _OneLineWarnings():
        summary = _evaluate_checkpoint(args)
    _print_eval_summary(summary)


def _evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    from ..evaluate import evaluate

    return evaluate(
        args.checkpoint,
        args.store,
        args.out,
        split=args.split,
        windows=args.tta,
        n_crops=args.n_crops,
        aggregate=args.aggregate,
        stride=_stride_in_store_samples(args.store, args.stride),
        batch_size=args.batch_size,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        device=args.device,
        ci_method=args.ci_method,
        stratify=args.stratify,
        subgroups=args.subgroups,
        leads=[s for group in args.leads for s in group] if args.leads else None,
        calibrate=args.calibrate,
        calibration_split=args.calibration_split,
        save_calibration=args.save_calibration,
        allow_seen_records=args.allow_seen_records,
        show_progress=not args.quiet,
    )


def _evaluate_predictions(args: argparse.Namespace) -> None:
    """``evaluate --predictions FILE --labels FILE``: scores made elsewhere, no model."""
    from ..evaluate import evaluate_predictions

    parser = args.evaluate_parser
    if not (args.predictions and args.labels):
        parser.error("--predictions and --labels go together")
    if args.checkpoint or args.store:
        parser.error("give either CHECKPOINT STORE or --predictions/--labels, not both")
    for option in ("leads", "calibrate"):
        if getattr(args, option):
            parser.error(f"--{option} needs a model (CHECKPOINT STORE), not a predictions file")
    check_output_folder(args.out)
    with _OneLineWarnings():
        summary = evaluate_predictions(
            args.predictions,
            args.labels,
            args.out,
            task=args.task,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            ci_method=args.ci_method,
            stratify=args.stratify,
            subgroups=args.subgroups,
            show_progress=not args.quiet,
        )
    _print_eval_summary(summary)


def _stride_in_store_samples(store: str, stride_s: float | None) -> int | None:
    """``--stride`` is in seconds for every command; the store's rows are at its own rate (100 Hz)."""
    if stride_s is None:
        return None
    import json
    from pathlib import Path

    try:
        fs = float(json.loads((Path(store) / "store.json").read_text())["fs"])
    except (OSError, ValueError, KeyError):
        fs = 100.0  # not a readable store: evaluate() itself reports that on one line
    return max(1, int(round(stride_s * fs)))


def _cmd_compare(args: argparse.Namespace) -> None:

    check_output_folder(args.out)
    names = tuple(args.names) if args.names else None
    if names is not None and len(names) != 2:
        args.compare_parser.error(f"--names needs two names, got {len(names)}")
    with _OneLineWarnings():
        result = _compare(args, names)
    for line in result["lines"]:
        print(line)
    print(f"report: {result['report']}")


def _compare(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    from ..evaluate import compare_models

    return compare_models(
        args.a,
        args.b,
        args.out,
        store=args.store,
        split=args.split,
        labels=args.labels,
        task=args.task,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        ci_method=args.ci_method,
        stratify=args.stratify,
        names=names,
        device=args.device,
        windows=args.tta,
        batch_size=args.batch_size,
        allow_seen_records=args.allow_seen_records,
    )


def _cmd_explain(args: argparse.Namespace) -> None:
    from ..checkpoint import load_model
    from ..explain import explain_file
    from ..runtime import resolve_device

    out = check_output_file(args.out, (".png",))
    model = load_model(args.checkpoint, device=str(resolve_device(args.device)))
    explanation, written = explain_file(
        model, args.record, args.label, out, method=args.method, steps=args.steps, read_kwargs=read_kwargs(args)
    )
    leads = ", ".join(f"{n} {s:.0%}" for n, s in explanation.top_leads(3))
    print(f"{explanation.label}: probability {explanation.probability:.3f}; top leads by attribution: {leads}")
    if explanation.completeness_gap == explanation.completeness_gap:  # not NaN
        print(
            f"integrated-gradients completeness gap {explanation.completeness_gap:.1%} "
            f"(raise --steps if above a few per cent)"
        )
    print(f"plot: {written}")


def _load(args: argparse.Namespace):  # noqa: ANN202
    from ..checkpoint import load_model
    from ..runtime import resolve_device

    device = str(resolve_device(args.device))
    return load_model(args.checkpoint, device=device)


def _cmd_predict(args: argparse.Namespace) -> None:
    from ..inference import label_names, predict_files
    from ..store import LabelTable

    check_output_file(args.out, (".csv", ".parquet"))  # before the model or any record is loaded
    model = _load(args)
    # Only the columns of the model's outputs are truth: a split or patient column beside them is not read.
    labels = (
        LabelTable.from_csv(args.labels, id_column=args.id_column, label_columns=label_names(model))
        if args.labels
        else None
    )
    summary = predict_files(
        model,
        args.inputs,
        args.out,
        mode="predict",
        windows=args.windows,
        aggregate=args.aggregate,
        stride_s=args.stride,
        batch_size=args.batch_size,
        read_kwargs=read_kwargs(args),
        progress=not args.quiet,
        allow_outside_root=args.allow_absolute_paths,
        engine=args.engine,
        workers=args.workers,
        labels=labels,
    )
    _print_summary(summary)


def _cmd_embed(args: argparse.Namespace) -> None:
    from ..inference import predict_files

    check_output_file(args.out, (".csv", ".parquet", ".npy"))
    summary = predict_files(  # checks --layer against the model before any record is read
        _load(args),
        args.inputs,
        args.out,
        mode="embed",
        layer=args.layer,
        windows=args.windows,
        aggregate=args.aggregate,
        stride_s=args.stride,
        batch_size=args.batch_size,
        read_kwargs=read_kwargs(args),
        progress=not args.quiet,
        allow_outside_root=args.allow_absolute_paths,
        engine=args.engine,
        workers=args.workers,
    )
    _print_summary(summary)


def _print_summary(summary) -> None:  # noqa: ANN001
    print(
        f"wrote {summary.written} records to {summary.out}"
        + (
            f" ({summary.unscored} not scorable: empty probabilities, reason in the quality column)"
            if getattr(summary, "unscored", 0)
            else ""
        )
        + (f"; {summary.rejected} rejected (reasons in {summary.rejects_path})" if summary.rejected else "")
        + (f"; {summary.skipped}" if getattr(summary, "skipped", "") else "")
        + (
            f"; probabilities calibrated with the model's saved {summary.calibration} fit"
            if getattr(summary, "calibration", "")
            else ""
        )
    )


def _cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    report = run_demo(args.out, data=args.data, records=args.records, quick=args.quick)
    print(f"\ndemo finished: open {report}")


def _add_ci_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap resamples for CIs (0 = none)")
    p.add_argument(
        "--ci-method",
        choices=["percentile", "bca"],
        default="percentile",
        help="bootstrap interval: percentile, or BCa (bias-corrected and accelerated; use >= 2000 resamples)",
    )
    p.add_argument(
        "--stratify",
        action="store_true",
        help="resample within each class / label combination (keeps the prevalence fixed)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap (and random crops)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (scoring, bootstrap)")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    """Options shared by predict and embed (after each command's positionals and --out)."""
    p.add_argument(
        "--windows",
        choices=["sliding", "first", "all_non_overlapping"],
        default="sliding",
        help="how records longer than 5 s are cut into 5 s windows: sliding (every --stride seconds, the "
        "last window flush with the end), first (first 5 s only), all_non_overlapping (tail dropped)",
    )
    p.add_argument(
        "--stride",
        type=positive_float,
        metavar="SECONDS",
        help="seconds between sliding windows (default: 5, no overlap)",
    )
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="combine the windows of a record")
    p.add_argument("--batch-size", type=positive_int, default=64, help="windows per forward pass (across records)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes that read and preprocess records")
    add_read_options(p)
    add_device_option(p)
    p.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="let manifest entries point outside the manifest's folder (absolute or '..' paths)",
    )
    p.add_argument(
        "--engine",
        choices=["eager", "auto", "bf16", "int8", "onnx", "compile"],
        default="eager",
        help="eager = exact float32; auto = bf16 on GPUs and CPUs with AMX/AVX512-BF16; int8 = dynamic "
        "quantisation (CPU); onnx = ONNX Runtime; compile = torch.compile. Accuracy costs: "
        "the project's benchmarks/RESULTS.md",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@register
def _add(sub: argparse._SubParsersAction) -> None:
    # The order of the calls is the order of `hubert-ecg --help`.
    _add_evaluate(sub)
    _add_compare(sub)
    _add_explain(sub)
    _add_predict(sub)
    _add_embed(sub)
    _add_demo(sub)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "evaluate", "metrics with bootstrap CIs, TTA, plots and a report for a fine-tuned model", _cmd_evaluate
    )
    p.add_argument("checkpoint", nargs="?", help="fine-tuned model (e.g. RUN/best)")
    p.add_argument("store", nargs="?", help="labelled store")
    p.set_defaults(evaluate_parser=p)
    p.add_argument(
        "--predictions",
        help="score predictions made elsewhere: CSV with record_id and p_<label> "
        "(or <label>) probability columns (instead of CHECKPOINT STORE)",
    )
    p.add_argument(
        "--labels",
        help="with --predictions: CSV with record_id and one column per label (plus any columns for --subgroups)",
    )
    p.add_argument(
        "--task",
        choices=["multi_label", "binary", "multi_class", "regression"],
        default="multi_label",
        help="with --predictions: what the columns mean",
    )
    p.add_argument("--split", default="test", help="store split to evaluate ('' = every row)")
    _add_allow_seen(p)
    p.add_argument("--out", required=True, help="output folder")
    _add_evaluate_window_args(p)
    _add_ci_args(p)
    _add_evaluate_clinical_args(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="windows per forward pass")
    add_device_option(p)


def _add_allow_seen(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-seen-records",
        action="store_true",
        help="score a split holding rows the model was fine-tuned on (train, or val: it chose best/ and the "
        "thresholds) of this store; refused by default, as its metrics are optimistic (the report says so)",
    )


def _add_evaluate_window_args(p: argparse.ArgumentParser) -> None:
    """How ``evaluate`` cuts each record into 5 s windows and combines them."""
    p.add_argument(
        "--windows",
        "--tta",
        dest="tta",
        choices=["first", "random", "sliding"],
        default="first",
        help="windows per record (test-time augmentation): the first 5 s, --n-crops random 5 s crops, "
        "or sliding windows every --stride seconds (--tta is the old name)",
    )
    p.add_argument("--n-crops", type=positive_int, default=3, help="random crops per record for --windows random")
    p.add_argument(
        "--stride",
        type=positive_float,
        metavar="SECONDS",
        help="seconds between sliding windows (default: 5, no overlap)",
    )
    p.add_argument(
        "--aggregate", choices=["mean", "max"], default="mean", help="combine the window probabilities of a record"
    )


def _add_evaluate_clinical_args(p: argparse.ArgumentParser) -> None:
    """Subgroups, reduced-lead sets and calibration of ``evaluate``."""
    p.add_argument(
        "--subgroups",
        type=_csv_list,
        metavar="COL,COL",
        help="metrics with CIs per group of these manifest/metadata/label columns (e.g. sex,age,site); "
        "numeric columns are binned (age: <40/40-59/60-79/>=80, others: quartiles)",
    )
    p.add_argument(
        "--leads",
        type=_lead_sets,
        action="append",
        metavar="SET",
        help="also score with only these leads (others zeroed) and report the change vs 12 leads: a named "
        "set (limb, precordial, I, II) or a lead list (I,II); repeat the option or separate sets "
        "with ';' (--leads limb --leads 'I,II;V1')",
    )
    p.add_argument(
        "--calibrate",
        choices=["auto", "platt", "temperature"],
        help="fit post-hoc calibration on --calibration-split and report calibrated probabilities "
        "(auto: Platt per label for multi-label/binary, temperature for multi-class)",
    )
    p.add_argument("--calibration-split", default="val", help="split the calibration is fitted on")
    p.add_argument(
        "--save-calibration",
        action="store_true",
        help="store the fitted calibration in the checkpoint's config (applied by later evaluations)",
    )


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "compare",
        "two models on the same records side by side: paired bootstrap differences of "
        "every metric and DeLong's test for AUROC",
        _cmd_compare,
    )
    p.set_defaults(compare_parser=p)
    p.add_argument("a", help="model A (checkpoint, with --store) or predictions CSV A (with --labels)")
    p.add_argument("b", help="model B, the same kind as A; differences are B - A")
    p.add_argument("--out", required=True, help="output folder (compare.html, compare.md, comparison.json)")
    p.add_argument("--store", help="with two checkpoints: the labelled store both are scored on")
    p.add_argument("--split", default="test", help="store split ('' = every row)")
    _add_allow_seen(p)
    p.add_argument("--labels", help="with two predictions CSVs: the labels CSV")
    p.add_argument(
        "--task",
        choices=["multi_label", "binary", "multi_class", "regression"],
        default="multi_label",
        help="with predictions CSVs: what the columns mean",
    )
    p.add_argument("--names", type=_csv_list, metavar="A,B", help="names shown in the report (default: file names)")
    p.add_argument(
        "--windows",
        "--tta",
        dest="tta",
        choices=["first", "random", "sliding"],
        default="first",
        help="windows per record: the first 5 s, random 5 s crops, or sliding windows (--tta: old name)",
    )
    _add_ci_args(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="windows per forward pass")
    add_device_option(p)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "explain", "which leads and moments drove a prediction: attribution drawn on the ECG", _cmd_explain
    )
    p.add_argument("checkpoint", help="fine-tuned model")
    p.add_argument("record", help="one ECG file in any supported format")
    p.add_argument("--label", required=True, help="output to explain: a label name (e.g. AF) or index")
    p.add_argument("--out", required=True, help="PNG: the 12-lead ECG (3x4 + rhythm strip) with the attribution")
    p.add_argument(
        "--method",
        choices=["integrated_gradients", "gradient_x_input"],
        default="integrated_gradients",
        help="attribution method: integrated gradients (from a flat baseline) or gradient x input",
    )
    p.add_argument("--steps", type=positive_int, default=32, help="integration steps for integrated gradients")
    add_read_options(p)
    add_device_option(p)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "predict", "probabilities and decisions for every record (any length, any format)", _cmd_predict
    )
    p.add_argument("checkpoint", help="fine-tuned model: our dir, published HF dir or .pt, or a HF model id")
    p.add_argument("inputs", nargs="+", help="files, folders or a manifest, in any supported format")
    p.add_argument(
        "--out",
        required=True,
        help="output table: .csv or .parquet; columns record_id, source, "
        "n_windows, p_<label> (probability), y_<label> (decision)",
    )
    p.add_argument(
        "--labels",
        metavar="CSV",
        help="known labels (record id + one column per model label): adds "
        "y_true_<label> columns beside the predictions",
    )
    p.add_argument("--id-column", help="record id column of --labels (default: record_id, filename, ecg_id ...)")
    _add_inference_args(p)


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "embed", "embeddings of a chosen layer for every record", _cmd_embed)
    p.add_argument("checkpoint", help="model: our dir, published HF dir or .pt, or a HF model id")
    p.add_argument("inputs", nargs="+", help="files, folders or a manifest, in any supported format")
    p.add_argument(
        "--out",
        required=True,
        help="output: .parquet (one float32 list column 'embedding'), .npy "
        "((N, hidden) float32 + <name>.ids.csv) or .csv (e0..eH-1)",
    )
    _add_inference_args(p)
    p.add_argument(
        "--layer", type=non_negative_int, help="hidden-state index (0 = encoder input, i = layer i; default last)"
    )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        "the main job end to end on synthetic data (or DATA): prepare -> pre-train -> fine-tune -> evaluate -> report",
        _cmd_demo,
    )
    p.add_argument("--out", default="demo_out", help="output folder (store, runs, reports)")
    p.add_argument("--data", help="your own labelled records: a folder with records and labels.csv")
    p.add_argument("--records", type=positive_int, default=400, help="synthetic records to generate")
    p.add_argument("--quick", action="store_true", help="smallest settings (for tests)")
