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
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

Handler = Callable[[argparse.Namespace], int | None]

EPILOG = """\
typical flow:
  hubert-ecg prepare RECORDS/ --out store/                 read + preprocess once
  hubert-ecg finetune store/ --init Edoardo-BS/hubert-ecg-small --out run/
  hubert-ecg evaluate run/best store/ --split test --out eval/
  hubert-ecg predict run/best my_ecgs/ --out predictions.csv

pre-training:
  hubert-ecg pretrain-loop configs/pretrain-loop.yaml     features -> k-means -> labels -> train, iterated

run `hubert-ecg COMMAND --help` for the options of each command.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default only when it says something (not None / False / suppressed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if "%(default)" in help_ or "default" in help_ or action.default in (None, False, argparse.SUPPRESS) \
                or action.option_strings == [] or isinstance(action.default, bool):
            return help_
        return f"{help_} (default: %(default)s)"


def add_command(sub: argparse._SubParsersAction, name: str, help_: str, handler: Handler,
         description: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=description or help_, formatter_class=_Formatter)
    parser.set_defaults(handler=handler)
    return parser


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """Reader options shared by every command that reads ECG files."""
    parser.add_argument("--fs", type=float, help="sampling rate for formats that do not store it (.npy, bare .mat, CSV)")
    parser.add_argument("--units", help="override units (mV, uV) for formats without them")
    parser.add_argument("--allow-missing-leads", action="store_true",
                        help="accept records missing leads that cannot be derived (filled with zeros and flagged; "
                             "the published models were trained on all 12)")


def read_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The reader keyword arguments of :func:`add_read_options`."""
    out: dict[str, Any] = {}
    if args.fs:
        out["fs"] = args.fs
    if args.units:
        out["units"] = args.units
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
    from . import model_cmds, data_cmds, train_cmds, eval_cmds  # noqa: F401  (each registers its commands)

    parser = argparse.ArgumentParser(
        prog="hubert-ecg", formatter_class=_Formatter, epilog=EPILOG,
        description="HuBERT-ECG: load, embed, predict, fine-tune, evaluate and pre-train a foundation "
                    "model for 12-lead ECGs.")
    parser.add_argument("--version", action="version", version=f"hubert-ecg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for registrar in _REGISTRARS:
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
        print(f"hubert-ecg: internal error ({type(err).__name__}: {_one_line(err)}); "
              "rerun with --debug for the traceback and please report it", file=sys.stderr)
        return EXIT_ERROR
    return int(result or 0)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def output_path(path: str | Path) -> Path:
    return Path(path).expanduser()


if __name__ == "__main__":
    sys.exit(main())
