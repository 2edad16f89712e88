"""The ``hubert-ecg`` command line: one subcommand per pipeline step.

Every handler is a thin layer over the library: parse arguments, call one function, print where
the results are.

Exit status: 0 success; 1 a handled runtime error (bad input, refused checkpoint, missing file),
printed as one line naming the file and the problem; 2 a usage error (unknown option, a value out of
range: argparse's convention); 130 interrupted. An unexpected exception (a bug in this package) is
reported as an internal error, also on one line, with status 1; ``--debug`` shows every traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import check_not_foreign

Handler = Callable[[argparse.Namespace], int | None]

EPILOG = """\
typical flow:
  hubert-ecg prepare RECORDS/ --out store/                 read + preprocess once
  hubert-ecg finetune store/ --init Edoardo-BS/hubert-ecg-small --out run/
  hubert-ecg evaluate run/best store/ --split test --out eval/
  hubert-ecg predict run/best my_ecgs/ --out predictions.csv

clinical evaluation:
  hubert-ecg evaluate run/best store/ --out eval/ --subgroups sex,age --calibrate auto --leads limb --leads II
  hubert-ecg evaluate --predictions preds.csv --labels labels.csv --out eval/    predictions made elsewhere
  hubert-ecg compare run-a/best run-b/best --store store/ --out cmp/    paired bootstrap + DeLong
  hubert-ecg explain run/best record.hea --label AF --out why.png       attribution on the 12-lead ECG

pre-training:
  hubert-ecg config pretrain-loop > loop.yaml             a commented template; edit store/out/iterations
  hubert-ecg pretrain-loop loop.yaml                      features -> k-means -> labels -> train, iterated

run `hubert-ecg COMMAND --help` for the options of each command.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default only when it says something (not None / False / suppressed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if (
            "%(default)" in help_
            or "default" in help_
            or action.default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
            or isinstance(action.default, bool)
        ):
            return help_
        return f"{help_} (default: %(default)s)"


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help_: str,
    handler: Handler,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with its examples (``epilog``, else :data:`examples.EXAMPLES`)."""
    from .examples import EXAMPLES

    parser = sub.add_parser(
        name,
        help=help_,
        description=description or help_,
        formatter_class=_Formatter,
        epilog=epilog or EXAMPLES.get(name),
    )
    parser.set_defaults(handler=handler)
    return parser


# ---------------------------------------------------------------------------------------------
# Range-checked option types: a value out of range is a usage error (exit 2) at parse time, before
# anything is read or written. argparse prints "argument --x: invalid <name> value: 'v'" plus our reason.
# ---------------------------------------------------------------------------------------------
def _number(text: str, kind: type) -> Any:
    import math

    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, steps, counts)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (0 = off: bootstrap resamples, patience ...)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, rates, learning rates)."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay, gradient clipping)."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1] (probabilities, dropout)."""
    value = _number(text, float)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def open_fraction(text: str) -> float:
    """A number in [0, 1) (split fractions: some rows must remain)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    """A number in (0, 1] (decay factors, sample fractions)."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


for _f, _name in (
    (positive_int, "positive integer"),
    (non_negative_int, "non-negative integer"),
    (positive_float, "positive number"),
    (non_negative_float, "non-negative number"),
    (fraction, "fraction"),
    (open_fraction, "fraction"),
    (unit_interval, "fraction"),
):
    _f.__name__ = _name  # argparse names the type in its message: "invalid positive integer value: '0'"


def check_output_file(path: str | Path, suffixes: Sequence[str] = (), option: str = "--out") -> Path:
    """Check an output file path before any work (one-line error, status 1): not an existing folder,
    no parent that is a file, and one of ``suffixes`` when given."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is an existing folder; {option} needs a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{path}: unknown extension {path.suffix or '(none)'!r} for {option}; use {' or '.join(suffixes)}"
        )
    _check_parents(path)
    check_not_foreign(path, option)
    return path


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Check an output folder path before any work: not an existing file, no parent that is a file."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: is an existing file; {option} needs a folder")
    _check_parents(path)
    return path


def _check_parents(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: cannot write here (Not a directory): {parent} is a file")
            break


def voltage_unit(text: str) -> str:
    """A voltage unit (mV, uV, µV, V, nV ...): the only units a record's values can be converted from."""
    from ..io.record import unit_scale_to_mv

    if unit_scale_to_mv(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a voltage unit; use mV, uV, V or nV")
    return text


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """Reader options shared by every command that reads ECG files (one argument group)."""
    from ..io.registry import format_names

    group = parser.add_argument_group(
        "reading records",
        "what the files do not say themselves; a sidecar <record>.json beside a file,\n"
        '{"fs": 500, "units": "uV", "leads": [...]}, does the same for that record',
    )
    group.add_argument(
        "--fs",
        type=positive_float,
        metavar="HZ",
        help="sampling rate of records whose format stores none (.npy, .npz without fs, bare .mat, "
        "CSV without a time column); never assumed",
    )
    group.add_argument(
        "--units", type=voltage_unit, metavar="UNIT", help="unit of the stored values (mV, uV, V), replacing the file's"
    )
    group.add_argument(
        "--lead-names",
        nargs="+",
        metavar="NAME",
        help="channel names in file order (e.g. for a CSV without a header row), replacing the file's",
    )
    group.add_argument(
        "--format",
        dest="read_format",
        choices=format_names(),
        metavar="FORMAT",
        help=f"read the records as this format instead of detecting it ({', '.join(format_names())}); "
        "a file whose suffix is not of a known format must then be named explicitly",
    )
    group.add_argument(
        "--allow-missing-leads",
        action="store_true",
        help="accept records missing leads that cannot be derived (filled with zeros and flagged; "
        "the published models were trained on all 12)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` of the commands that run a model outside the training loop (one wording everywhere)."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")


def read_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The reader keyword arguments of :func:`add_read_options`."""
    out: dict[str, Any] = {}
    if args.fs:
        out["fs"] = args.fs
    if args.units:
        out["units"] = args.units
    if getattr(args, "lead_names", None):
        out["lead_names"] = list(args.lead_names)
    if getattr(args, "read_format", None):
        out["fmt"] = args.read_format
    if args.allow_missing_leads:
        out["allow_missing_leads"] = True
    return out


_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = []


def register(func: Callable[[argparse._SubParsersAction], None]) -> Callable[[argparse._SubParsersAction], None]:
    """Decorator for modules that add their own subcommands (keeps each command beside its code)."""
    _REGISTRARS.append(func)
    return func


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    # Each module registers its commands on import.
    from . import config_cmds, data_cmds, eval_cmds, model_cmds, share_cmds, train_cmds  # noqa: F401

    parser = argparse.ArgumentParser(
        prog="hubert-ecg",
        formatter_class=_Formatter,
        epilog=EPILOG,
        description="HuBERT-ECG: load, embed, predict, fine-tune, evaluate and pre-train a foundation "
        "model for 12-lead ECGs.",
    )
    parser.add_argument("--version", action="version", version=f"hubert-ecg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    # The order of `hubert-ecg --help` follows the pipeline, whatever order the modules were imported in.
    order = ["model_cmds", "data_cmds", "train_cmds", "eval_cmds", "share_cmds", "config_cmds"]
    rank = {name: i for i, name in enumerate(order)}
    for registrar in sorted(_REGISTRARS, key=lambda f: rank.get(f.__module__.rsplit(".", 1)[-1], len(order))):
        registrar(sub)
    return parser


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Errors that mean "the input or the environment is wrong", reported as one line. Anything else is a
# bug in this package and is reported as an internal error (still one line, still status 1).
HANDLED_ERRORS = (ValueError, OSError, KeyError, RuntimeError, LookupError, EOFError, ImportError)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    message = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        message = f"missing key {message}"
    if isinstance(err, OSError) and getattr(err, "filename", None) and str(err.filename) not in message:
        message = f"{err.filename}: {err.strerror or message}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..runs import set_command  # run.json records the command line as typed

    set_command(["hubert-ecg", *(sys.argv[1:] if argv is None else argv)])
    try:
        return _run(parser, args)
    finally:
        set_command(None)  # a later library call in this process records its own command, not this one


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The chosen command's handler, its errors turned into one line and an exit status."""
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USAGE
    try:
        result = args.handler(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("hubert-ecg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `hubert-ecg ... | head`: the reader went away; stop quietly, as Unix tools do.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except HANDLED_ERRORS as err:
        if args.debug:
            raise
        print(f"hubert-ecg: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001  (a bug: say so on one line; --debug shows where)
        if args.debug:
            raise
        print(
            f"hubert-ecg: internal error ({type(err).__name__}: {_one_line(err)}); "
            "rerun with --debug for the traceback and please report it",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
