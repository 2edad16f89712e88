"""Sharing prepared stores: ``store-export`` (store -> Parquet) and ``store-import`` (Parquet -> store)."""

from __future__ import annotations

import argparse

from . import add_command, check_output_file, register


def _cmd_store_export(args: argparse.Namespace) -> None:
    from ..hf_datasets import export_store

    check_output_file(args.out, (".parquet",))
    out = export_store(args.store, args.out, split=args.split or None)
    print(f"exported {args.store}{f' (split {args.split})' if args.split else ''} -> {out}")


def _cmd_store_import(args: argparse.Namespace) -> None:
    from ..hf_datasets import import_store

    store = import_store(args.source, args.out)
    print(f"store {store.path}: {len(store)} rows, labels: {', '.join(store.label_names) or 'none'}")


@register
def _add(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "store-export",
        "write a prepared store's rows and labels to one Parquet file (to share it, "
        "or to load it with Hugging Face datasets / pandas)",
        _cmd_store_export,
    )
    p.add_argument("store", help="prepared store (from `hubert-ecg prepare`)")
    p.add_argument(
        "--out",
        required=True,
        help="output .parquet file: one row per store row, a (12, samples) "
        "float32 'signal' column, label:<name> columns, the store header "
        "in the file metadata",
    )
    p.add_argument("--split", help="export only this split (train, val, test ...)")

    p = add_command(
        sub, "store-import", "rebuild a prepared store from a Parquet file written by store-export", _cmd_store_import
    )
    p.add_argument("source", help="Parquet file from `hubert-ecg store-export` (or datasets' to_parquet of one)")
    p.add_argument("--out", required=True, help="new store directory (must not exist or be empty)")
