"""Data commands: ``prepare`` (records -> store) and ``datasets`` (benchmark label tables)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import (
    add_command,
    add_read_options,
    non_negative_int,
    open_fraction,
    positive_float,
    positive_int,
    read_kwargs,
    register,
)

if TYPE_CHECKING:  # type names only: a command imports what it uses when it runs
    from ..io import Record
    from ..preprocess import PreprocessSpec
    from ..store import LabelTable, PrepareResult


def _cmd_prepare(args: argparse.Namespace) -> None:
    from ..store import prepare_store

    spec = _prepare_spec(args)
    _check_prepare_args(args)
    labels = _prepare_labels(args)
    result = prepare_store(
        args.inputs,
        args.out,
        spec=spec,
        labels=labels,
        row_seconds=args.row_seconds,
        shard_records=args.shard_records,
        workers=args.workers,
        read_kwargs=_prepare_read_kwargs(args),
        progress=not args.quiet,
        split_fractions=(args.val_fraction, args.test_fraction),
        seed=args.seed,
        allow_outside_root=args.allow_absolute_paths,
        split_strategy=args.split_strategy,
    )
    _report_prepare(result)


def _prepare_spec(args: argparse.Namespace) -> PreprocessSpec:
    """The preprocessing spec: the published one (or the reference's) with the flags' changes."""
    from ..preprocess import PreprocessSpec

    spec = PreprocessSpec.reference() if args.reference_preprocessing else PreprocessSpec()
    if args.baseline_highpass is not None or args.no_filter or args.already_preprocessed:
        changes: dict[str, Any] = {}
        if args.baseline_highpass is not None:
            changes["baseline_highpass_hz"] = args.baseline_highpass
        if args.no_filter or args.already_preprocessed:
            changes["bandpass_hz"] = None
        if args.already_preprocessed:
            changes["scaling"] = "none"
        spec = PreprocessSpec.from_dict({**spec.to_dict(), **changes})
    return spec


def _check_prepare_args(args: argparse.Namespace) -> None:
    """Refuse what cannot work before any record or label is read."""
    from ..atomic import check_output_dir

    check_output_dir(args.out, marker="store.json", what="store")
    if args.val_fraction + args.test_fraction >= 1:
        raise ValueError(
            f"--val-fraction {args.val_fraction:g} + --test-fraction {args.test_fraction:g} leave no "
            "training records (their sum must be below 1)"
        )
    if not args.labels and (args.group_column or args.time_column or args.split_column):
        raise ValueError("--group-column, --time-column and --split-column name columns of --labels; give --labels")


def _prepare_labels(args: argparse.Namespace) -> LabelTable | None:
    """The --labels table (None without it); text label values are announced with their class indices."""
    if not args.labels:
        return None
    from ..store import LabelTable

    labels = LabelTable.from_csv(
        args.labels,
        id_column=args.id_column,
        label_start_index=args.label_start_index,
        label_columns=args.label_columns,
        split_column=args.split_column,
        group_column=args.group_column,
        time_column=args.time_column,
        categorical=args.categorical,
    )
    for name, classes in labels.classes.items():
        print(
            f"label {name!r}: text values stored as class indices "
            + ", ".join(f"{i}={c}" for i, c in enumerate(classes))
        )
    return labels


def _prepare_read_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    reading = read_kwargs(args)
    if args.already_preprocessed and "fs" not in reading:
        from ..io.arrays import REFERENCE_FS

        reading["fs"] = REFERENCE_FS  # the reference's preprocessed .npy files are 500 Hz by definition
    return reading


def _report_prepare(result: PrepareResult) -> None:
    """One summary line, a note on records without units, and an error when nothing was accepted."""
    for note in result.notes:
        print(note)
    print(
        f"store {result.store}: {result.records} records in {result.rows} rows, {result.rejected} rejected"
        + (f" (reasons in {result.store / 'rejects.csv'})" if result.rejected else "")
        + (f"; {result.skipped_done} already done" if result.skipped_done else "")
        + (f"; {result.warned} accepted with warnings (see the meta column of manifest.csv)" if result.warned else "")
    )
    unknown_units = _count_unknown_units(result.store / "manifest.csv")
    if unknown_units:  # nothing assumed silently: say how many records carry no amplitude calibration
        print(
            f"{unknown_units} record(s) with unknown amplitude units: values kept as stored (pass --units, or a "
            "sidecar, if you know them; per-lead scaling makes the model input independent of the unit)"
        )
    if result.records == 0:  # a batch job that accepts nothing has failed (docs/RELIABILITY.md)
        raise ValueError(
            f"{result.store}: no record accepted ({result.rejected} rejected; reasons in "
            f"{result.store / 'rejects.csv'})"
        )


def _count_unknown_units(manifest: Path) -> int:
    """Records (first segments) of a store manifest whose units are ``unknown``."""
    import csv

    if not manifest.is_file():
        return 0
    with open(manifest, newline="") as handle:
        return sum(row.get("segment") == "0" and row.get("units") == "unknown" for row in csv.DictReader(handle))


def _cmd_datasets(args: argparse.Namespace) -> None:
    from .. import label_tables as datasets

    paths: Mapping[str, Path | datasets.LabelCSV]  # ptbxl: the files written; the others: one table's summary
    if args.dataset == "ptbxl":
        paths = datasets.build_ptbxl_tables(
            args.root, args.out, task=args.task, sampling=args.sampling, min_count=args.min_count
        )
    elif args.dataset == "reference-splits":
        splits = dict(zip(("train", "val", "test"), args.splits))
        paths = {
            "labels": datasets.reference_split_table(
                splits, Path(args.out) / "labels.csv", label_start_index=args.label_start_index
            )
        }
    elif args.dataset == "cinc":
        paths = {
            "labels": datasets.cinc_labels_table(
                args.root, Path(args.out) / "labels.csv", classes=args.classes, min_count=args.min_count
            )
        }
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
    from ..io import InputAccount, discover_sources
    from ..progress import progress, say

    account = InputAccount()
    sources = discover_sources(args.inputs, allow_outside_root=args.allow_absolute_paths, account=account)
    for path, reason in account.skipped:
        print(f"SKIP   {path}: {reason}")
    if not sources:
        raise ValueError(
            f"no ECG records found under {', '.join(args.inputs)}"
            + (f" ({account.summary()})" if account.skipped else "")
        )
    # Plotting takes a noticeable time per record: show a bar (stderr) and print lines above it.
    inspector = _Inspector(args, emit=say if args.plot else print)
    for src in progress(sources, desc="plots", unit="rec", enabled=bool(args.plot), leave=False):
        inspector.inspect(src)
    print(
        f"{len(sources) - inspector.bad} readable, {inspector.bad} rejected"
        + (f", {inspector.flagged} flagged as not scorable" if inspector.flagged else "")
        + (f", {account.summary()}" if account.skipped else "")
    )
    return 1 if inspector.bad == len(sources) else 0


class _Inspector:
    """Reads, describes and plots the records of ``inspect`` one by one, counting rejected and flagged ones."""

    def __init__(self, args: argparse.Namespace, emit: Callable[[str], None]) -> None:
        self.args = args
        self.emit = emit
        self.options = read_kwargs(args)
        self.bad = self.flagged = 0
        self.figure: Any = None  # one Figure reused for every record: much faster than a new one each time

    def inspect(self, src: Any) -> None:
        from ..io import quality_label, read_source

        try:
            record = read_source(src, **self.options)
        except ValueError as err:
            self.bad += 1
            self.emit(f"REJECT {src.record_id}: {str(err).splitlines()[0]}")
            return
        unscorable = record.meta.get("unscorable")
        self.flagged += bool(unscorable)
        self.emit(f"{'FLAG  ' if unscorable else 'OK    '} {_describe_record(record)}")
        if unscorable:
            self.emit(f"       quality: {quality_label(record)}")
        for warning in record.meta.get("warnings", []):
            self.emit(f"       warning: {warning}")
        if self.args.plot:
            self.emit(f"       plot: {self.plot(record)}")

    def plot(self, record: Record) -> Path:
        """The record's 12-lead plot (or what was read beside the model input) in --plot; returns its path."""
        out = Path(self.args.plot) / f"{record.record_id}.png"
        if self.args.plot_model_input:
            from ..plots import plot_ecg
            from ..preprocess import PreprocessSpec, preprocess_signal

            model_input = preprocess_signal(record.signal, record.fs, PreprocessSpec())
            plot_ecg(
                record.signal,
                record.fs,
                out,
                model_input=model_input,
                title=f"{record.record_id} ({record.source})",
            )
        else:
            from ..plots import ecg_figure, save_figure

            scale = "" if record.units == "mV" else f"; units {record.units}: grid not to scale"
            self.figure = ecg_figure(
                record.signal, record.fs, fig=self.figure, title=f"{record.record_id} ({record.source}){scale}"
            )
            save_figure(self.figure, out)
        return out


def _describe_record(record: Record) -> str:
    """``ID: format, rate, length, units, peak-to-peak range ...`` for one line of ``inspect``."""
    import warnings

    import numpy as np

    from ..io import STANDARD_LEADS

    seconds = record.signal.shape[1] / record.fs
    recorded = [i for i, lead in enumerate(STANDARD_LEADS) if lead not in record.meta.get("missing_leads", [])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a lead without finite samples: NaN, said below
        ranges = np.nanmax(record.signal[recorded], axis=1) - np.nanmin(record.signal[recorded], axis=1)
    units = record.units if record.units != "unknown" else "unknown (values kept as stored)"
    return (
        f"{record.record_id}: {record.meta.get('format', '?')}, "
        f"{record.fs:g} Hz"
        + (f" ({record.meta['fs_source']})" if record.meta.get("fs_source") else "")
        + f", {seconds:.1f} s, units {units}, peak-to-peak {np.nanmin(ranges):.3g}-{np.nanmax(ranges):.3g}"
        + (f", derived {'/'.join(record.meta['derived_leads'])}" if record.meta.get("derived_leads") else "")
        + (f", labels {record.meta['labels']}" if record.meta.get("labels") else "")
    )


@register
def _add(sub: argparse._SubParsersAction) -> None:
    # The order of the calls is the order of `hubert-ecg --help`.
    _add_inspect(sub)
    _add_prepare(sub)
    _add_datasets(sub)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "inspect", "read records as `prepare` would: format, rate, length, units, warnings, plots", _cmd_inspect
    )
    p.add_argument("inputs", nargs="+", help="files, folders or manifests")
    p.add_argument(
        "--plot",
        metavar="DIR",
        help="write one PNG per record: the 12-lead ECG as printed in clinics "
        "(3x4 + lead II rhythm strip, 25 mm/s, 10 mm/mV)",
    )
    p.add_argument(
        "--plot-model-input",
        action="store_true",
        help="with --plot: draw each lead as read next to what the model sees (preprocessed) instead",
    )
    add_read_options(p)
    p.add_argument(
        "--allow-absolute-paths", action="store_true", help="let manifest entries point outside the manifest's folder"
    )


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "prepare",
        "read and preprocess records once into a memory-mappable store",
        _cmd_prepare,
        description=(
            "Read every record under INPUTS (files, folders searched recursively, or a manifest "
            ".csv/.txt), apply the preprocessing spec (published pipeline by default) and write a "
            "store. Re-running the same command resumes; bad records go to rejects.csv."
        ),
    )
    p.add_argument("inputs", nargs="+", help="files, folders or manifests")
    p.add_argument("--out", required=True, help="store directory")
    _add_prepare_label_args(p)
    _add_prepare_split_args(p)
    p.add_argument("--workers", type=positive_int, default=1, help="parallel reader/preprocessing processes")
    p.add_argument(
        "--row-seconds", type=positive_float, default=10.0, help="seconds per stored row (longer records span rows)"
    )
    p.add_argument("--shard-records", type=positive_int, default=512, help="records per shard (the unit of resume)")
    add_read_options(p)
    _add_prepare_preprocessing_args(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the hash-based split assignment")
    p.add_argument(
        "--allow-absolute-paths",
        action="store_true",
        help="let manifest entries point outside the manifest's folder (absolute or '..' paths)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_prepare_label_args(p: argparse.ArgumentParser) -> None:
    """The --labels table of ``prepare`` and which of its columns mean what."""
    p.add_argument("--labels", help="CSV with a record id column and label columns")
    p.add_argument("--id-column", help="record id column of --labels (default: record_id, filename, ecg_id ...)")
    p.add_argument("--label-start-index", type=non_negative_int, help="first label column (the reference's contract)")
    p.add_argument("--label-columns", nargs="+", help="label columns by name")
    p.add_argument(
        "--split-column",
        help="column of --labels holding the split: train/training, val/valid/"
        "validation/dev, test/holdout (any case), or fold numbers (highest = test, next = val)",
    )
    p.add_argument(
        "--group-column",
        metavar="COLUMN",
        help="column of --labels grouping records (e.g. patient_id): every group stays in one split",
    )
    p.add_argument(
        "--time-column",
        metavar="COLUMN",
        help="column of --labels with the recording date/time (ISO or a number) for temporal splits",
    )


def _add_prepare_split_args(p: argparse.ArgumentParser) -> None:
    """How ``prepare`` draws splits when --labels has no split column, and how text labels are stored."""
    p.add_argument(
        "--split-strategy",
        choices=["random", "grouped", "temporal", "grouped_temporal"],
        help="how --val-fraction/--test-fraction are drawn: random (hash of the record id), grouped "
        "(whole groups, stratified on the labels; the default with --group-column), temporal "
        "(newest records test), grouped_temporal (whole groups by their first record)",
    )
    p.add_argument(
        "--categorical",
        choices=["index", "onehot"],
        default="index",
        help="text label columns (SR/AF/OTHER): one column of class indices (multi_class) or one 0/1 "
        "column per class (COLUMN=CLASS); the class names are stored in the store",
    )
    p.add_argument(
        "--val-fraction",
        type=open_fraction,
        default=0.0,
        help="share of records for validation when --labels gives no split column (see --split-strategy)",
    )
    p.add_argument(
        "--test-fraction",
        type=open_fraction,
        default=0.0,
        help="share of records for test when --labels gives no split column (see --split-strategy)",
    )


def _add_prepare_preprocessing_args(p: argparse.ArgumentParser) -> None:
    """Changes to the published preprocessing spec."""
    p.add_argument(
        "--reference-preprocessing",
        action="store_true",
        help="decimate the flattened 12-lead window exactly as the published loader",
    )
    p.add_argument(
        "--baseline-highpass", type=positive_float, metavar="HZ", help="add a real baseline-wander high-pass"
    )
    p.add_argument("--no-filter", action="store_true", help="skip the band-pass filter")
    p.add_argument(
        "--already-preprocessed",
        action="store_true",
        help="inputs are the reference's preprocessed .npy files (500 Hz, filtered, scaled)",
    )


def _add_datasets(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "datasets", "build label tables for public benchmarks from a local copy", _cmd_datasets)
    p.add_argument(
        "dataset",
        choices=["ptbxl", "cinc", "ludb", "reference-splits"],
        help="ptbxl: standard PTB-XL benchmark tables (folds 1-8/9/10); cinc: scored-class (or raw "
        "SNOMED) table from CinC 2020/2021 headers; ludb: LUDB rhythm/hypertrophy/... labels; "
        "reference-splits: merge the reference's train/val/test CSVs into one table with a split "
        "column",
    )
    p.add_argument("--root", help="local dataset folder (ptbxl, cinc, ludb)")
    p.add_argument("--splits", nargs="+", metavar="CSV", help="reference-splits: TRAIN.csv VAL.csv [TEST.csv]")
    p.add_argument("--label-start-index", type=non_negative_int, default=3, help="reference-splits: first label column")
    p.add_argument(
        "--min-count",
        type=positive_int,
        default=1,
        help="ptbxl, cinc --classes all: keep labels with at least this many records",
    )
    p.add_argument("--out", required=True, help="output folder for the tables")
    p.add_argument(
        "--task", default="all", choices=["all", "diag", "subdiag", "superdiag", "form", "rhythm"], help="PTB-XL task"
    )
    p.add_argument(
        "--classes",
        default="scored2021",
        choices=["scored2021", "scored2020", "all"],
        help="cinc: the challenge's scored classes (2021: 26, 2020: 24; equivalent codes merged, columns "
        "named AF, RBBB, ...) or all raw SNOMED codes (columns named by code)",
    )
    p.add_argument("--sampling", default="500", choices=["100", "500"], help="PTB-XL records100 or records500")
