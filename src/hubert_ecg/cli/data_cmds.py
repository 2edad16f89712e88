"""Data commands: ``prepare`` (records -> store) and ``datasets`` (benchmark label tables)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_command, add_read_options, read_kwargs, register


def _cmd_prepare(args: argparse.Namespace) -> None:
    from ..preprocess import PreprocessSpec
    from ..store import LabelTable, prepare_store

    spec = PreprocessSpec.reference() if args.reference_preprocessing else PreprocessSpec()
    if args.baseline_highpass is not None or args.no_filter or args.already_preprocessed:
        changes = {}
        if args.baseline_highpass is not None:
            changes["baseline_highpass_hz"] = args.baseline_highpass
        if args.no_filter or args.already_preprocessed:
            changes["bandpass_hz"] = None
        if args.already_preprocessed:
            changes["scaling"] = "none"
        spec = PreprocessSpec.from_dict({**spec.to_dict(), **changes})
    labels = None
    if args.labels:
        labels = LabelTable.from_csv(args.labels, id_column=args.id_column, label_start_index=args.label_start_index,
                                     label_columns=args.label_columns, split_column=args.split_column)
    result = prepare_store(args.inputs, args.out, spec=spec, labels=labels, row_seconds=args.row_seconds,
                           shard_records=args.shard_records, workers=args.workers, read_kwargs=read_kwargs(args),
                           progress=not args.quiet, split_fractions=(args.val_fraction, args.test_fraction),
                           seed=args.seed, allow_outside_root=args.allow_absolute_paths)
    print(f"store {result.store}: {result.records} records in {result.rows} rows, {result.rejected} rejected"
          + (f" (reasons in {result.store / 'rejects.csv'})" if result.rejected else "")
          + (f"; {result.skipped_done} already done" if result.skipped_done else "")
          + (f"; {result.warned} accepted with warnings (see the meta column of manifest.csv)" if result.warned else ""))


def _cmd_datasets(args: argparse.Namespace) -> None:
    from .. import label_tables as datasets

    if args.dataset == "ptbxl":
        paths = datasets.build_ptbxl_tables(args.root, args.out, task=args.task, sampling=args.sampling,
                                            min_count=args.min_count)
    elif args.dataset == "reference-splits":
        splits = dict(zip(("train", "val", "test"), args.splits))
        paths = {"labels": datasets.reference_split_table(splits, Path(args.out) / "labels.csv",
                                                          label_start_index=args.label_start_index)}
    elif args.dataset == "cinc":
        paths = {"labels": datasets.cinc_labels_table(args.root, Path(args.out) / "labels.csv")}
    else:
        paths = {"labels": datasets.ludb_labels_table(args.root, Path(args.out) / "labels.csv")}
    for name, path in paths.items():
        print(f"{name:>10}: {getattr(path, 'path', path)}")
        for attr in ("labels", "label_start_index", "n_records"):
            if hasattr(path, attr):
                value = getattr(path, attr)
                print(f"{'':>10}  {attr}: {len(value) if isinstance(value, list) and len(value) > 20 else value}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Read each record as `prepare` would and say what was found; optionally plot it."""
    from ..io import discover_sources, read_source
    from ..preprocess import PreprocessSpec, preprocess_signal

    options = read_kwargs(args)
    sources = discover_sources(args.inputs, allow_outside_root=args.allow_absolute_paths)
    if not sources:
        raise ValueError(f"no ECG records found under {', '.join(args.inputs)}")
    bad = 0
    for src in sources:
        try:
            record = read_source(src, **options)
        except ValueError as err:
            bad += 1
            print(f"REJECT {src.record_id}: {str(err).splitlines()[0]}")
            continue
        seconds = record.signal.shape[1] / record.fs
        ranges = record.signal.max(axis=1) - record.signal.min(axis=1)
        print(f"OK     {record.record_id}: {record.meta.get('format', '?')}, {record.fs:g} Hz, {seconds:.1f} s, "
              f"units {record.units}, peak-to-peak {ranges.min():.3g}-{ranges.max():.3g}"
              + (f", derived {'/'.join(record.meta['derived_leads'])}" if record.meta.get("derived_leads") else "")
              + (f", labels {record.meta['labels']}" if record.meta.get("labels") else ""))
        for warning in record.meta.get("warnings", []):
            print(f"       warning: {warning}")
        if args.plot:
            from ..plots import plot_ecg
            out = Path(args.plot) / f"{record.record_id}.png"
            model_input = preprocess_signal(record.signal, record.fs, PreprocessSpec())
            plot_ecg(record.signal, record.fs, out, model_input=model_input,
                     title=f"{record.record_id} ({record.source})")
            print(f"       plot: {out}")
    print(f"{len(sources) - bad} readable, {bad} rejected")
    return 1 if bad == len(sources) else 0


@register
def _add(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "inspect", "read records as `prepare` would: format, rate, length, units, warnings, plots",
                    _cmd_inspect)
    p.add_argument("inputs", nargs="+", help="files, folders or manifests")
    p.add_argument("--plot", metavar="DIR", help="write one PNG per record: the leads as read and the model input")
    add_read_options(p)
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="let manifest entries point outside the manifest's folder")

    p = add_command(sub, "prepare", "read and preprocess records once into a memory-mappable store",
                    _cmd_prepare, description=(
                        "Read every record under INPUTS (files, folders searched recursively, or a manifest "
                        ".csv/.txt), apply the preprocessing spec (published pipeline by default) and write a "
                        "store. Re-running the same command resumes; bad records go to rejects.csv."))
    p.add_argument("inputs", nargs="+", help="files, folders or manifests")
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--labels", help="CSV with a record id column and label columns")
    p.add_argument("--id-column", help="record id column of --labels (default: record_id, filename, ecg_id ...)")
    p.add_argument("--label-start-index", type=int, help="first label column (the reference's contract)")
    p.add_argument("--label-columns", nargs="+", help="label columns by name")
    p.add_argument("--split-column", help="column of --labels holding train/val/test")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hash-based validation split when no split column")
    p.add_argument("--test-fraction", type=float, default=0.0, help="hash-based test split when no split column")
    p.add_argument("--workers", type=int, default=1, help="parallel reader/preprocessing processes")
    p.add_argument("--row-seconds", type=float, default=10.0, help="seconds per stored row (longer records span rows)")
    p.add_argument("--shard-records", type=int, default=512, help="records per shard (the unit of resume)")
    add_read_options(p)
    p.add_argument("--reference-preprocessing", action="store_true",
                   help="decimate the flattened 12-lead window exactly as the published loader")
    p.add_argument("--baseline-highpass", type=float, metavar="HZ", help="add a real baseline-wander high-pass")
    p.add_argument("--no-filter", action="store_true", help="skip the band-pass filter")
    p.add_argument("--already-preprocessed", action="store_true",
                   help="inputs are the reference's preprocessed .npy files (500 Hz, filtered, scaled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="let manifest entries point outside the manifest's folder (absolute or '..' paths)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add_command(sub, "datasets", "build label tables for public benchmarks from a local copy", _cmd_datasets)
    p.add_argument("dataset", choices=["ptbxl", "cinc", "ludb", "reference-splits"],
                   help="ptbxl: standard PTB-XL benchmark tables (folds 1-8/9/10); cinc: SNOMED multi-hot table "
                        "from CinC-2021 headers; ludb: LUDB rhythm/hypertrophy/... labels; reference-splits: merge "
                        "the reference's train/val/test CSVs into one table with a split column")
    p.add_argument("--root", help="local dataset folder (ptbxl, cinc, ludb)")
    p.add_argument("--splits", nargs="+", metavar="CSV", help="reference-splits: TRAIN.csv VAL.csv [TEST.csv]")
    p.add_argument("--label-start-index", type=int, default=3, help="reference-splits: first label column")
    p.add_argument("--min-count", type=int, default=1, help="ptbxl: keep labels with at least this many records")
    p.add_argument("--out", required=True, help="output folder for the tables")
    p.add_argument("--task", default="all", choices=["all", "diag", "subdiag", "superdiag", "form", "rhythm"],
                   help="PTB-XL task")
    p.add_argument("--sampling", default="500", choices=["100", "500"], help="PTB-XL records100 or records500")
