"""Delimited text: one column per lead under a header of lead names (CSV, TSV, TXT)."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_ecg.io._build import build_record
from hubert_ecg.io.leads import STANDARD_LEADS
from hubert_ecg.io.record import Record, RecordError

__all__ = ["read_text", "split_unit_suffix", "sniff_delimiter", "looks_like_ecg_table", "decode_text"]

_TIME_SECONDS = {
    "time",
    "t",
    "times",
    "timestamp",
    "seconds",
    "second",
    "sec",
    "s",
    "time_s",
    "timesec",
    "elapsed_time",
    "elapsedtime",
}
# Units a units row (the line under the header, as in PhysioNet's CSV export) gives a time column.
_TIME_UNIT_ROLES = {
    "s": "time_s",
    "sec": "time_s",
    "seconds": "time_s",
    "ms": "time_ms",
    "msec": "time_ms",
    "milliseconds": "time_ms",
    "hh:mm:ss.mmm": "time_clock",
    "hh:mm:ss": "time_clock",
    "mm:ss.mmm": "time_clock",
}
# "0:00.002", "1:02:03.5": elapsed time written as a clock.
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")
# "0,123" / "-1,5e-3": a number written with a decimal comma (continental European spreadsheets).
_DECIMAL_COMMA = re.compile(r"^[-+]?\d*,\d+(?:[eE][-+]?\d+)?$")
_TIME_MILLIS = {"time_ms", "timems", "ms", "millis", "milliseconds"}
_INDEX = {"", "sample", "samples", "index", "idx", "n", "sample_index", "sampleindex", "unnamed:0"}
# "# fs: 500" / "# sampling_rate = 500" comment lines above the header.
_FS_COMMENT = re.compile(
    r"^#\s*(fs|sampling[ _]?rate|sampling[ _]?frequency|sample[ _]?rate)\s*(?:\((k?hz)\))?\s*[:=]\s*"
    r"([0-9.eE+-]+)\s*(k?hz)?\b",
    re.IGNORECASE,
)


def split_unit_suffix(label: str) -> tuple[str, str | None]:
    """``"V1 (mV)"`` -> ``("V1", "mV")``; ``"II [uV]"`` -> ``("II", "uV")``; no suffix -> unit None."""
    match = re.match(r"^\s*(.*?)\s*[\(\[]\s*([^\)\]]*?)\s*[\)\]]\s*$", label)
    if match and match.group(1):
        return match.group(1), match.group(2)
    return label.strip(), None


def sniff_delimiter(path: Path, header: str) -> str | None:
    """Delimiter of a text ECG: tab for .tsv, comma for .csv, else guessed from the header line.

    A line of semicolon-separated decimal-comma numbers (``0,123;0,456``) is semicolon-separated,
    whatever the suffix."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if ";" in header and all(_DECIMAL_COMMA.match(c.strip()) or _is_number(c) for c in header.split(";")):
        return ";"
    if suffix == ".csv" and "," in header:
        return ","
    for delimiter in ("\t", ";", ","):
        if delimiter in header:
            return delimiter
    return None  # whitespace-separated


def _column_role(name: str) -> str:
    base, unit = split_unit_suffix(name)
    key = base.strip().lower().replace(" ", "_")
    if key in _TIME_MILLIS or (key in _TIME_SECONDS and unit and unit.lower() == "ms"):
        return "time_ms"
    if key in _TIME_SECONDS and unit and unit.lower() in _TIME_UNIT_ROLES:
        return _TIME_UNIT_ROLES[unit.lower()]
    if key in _TIME_SECONDS:
        return "time_s"
    if key in _INDEX:
        return "index"
    return "lead"


def decode_text(data: bytes) -> str:
    """Text of a file's bytes: UTF-8 (with or without BOM) or UTF-16/32 with a BOM; Latin-1 otherwise."""
    import codecs

    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, "replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def looks_like_ecg_table(path: Path, head: bytes) -> bool:
    """True for a text table holding an ECG: a header naming at least two standard leads, or a
    header-less table of at least 8 numeric columns. Metadata and label CSVs (``metadata.csv``,
    ``labels.csv``) are not."""
    from hubert_ecg.io.leads import canonical_lead_name

    lines = [
        line
        for line in decode_text(head).splitlines()[:-1] or decode_text(head).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        return False
    delimiter = sniff_delimiter(Path(path), lines[0])
    cells = lines[0].split() if delimiter is None else [c.strip().strip('"') for c in lines[0].split(delimiter)]
    if sum(canonical_lead_name(split_unit_suffix(c)[0]) is not None for c in cells) >= 2:
        return True
    # Header-less: 8 (I, II, V1-V6) or more numeric columns look like leads; reading then says what is missing.
    return len(cells) >= 8 and all(_is_number(c) or _DECIMAL_COMMA.match(c) for c in cells)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unquote(cell: str) -> str:
    """A cell without surrounding single quotes (PhysioNet's CSV export quotes names and times so)."""
    cell = cell.strip()
    return cell[1:-1].strip() if len(cell) >= 2 and cell[0] == cell[-1] == "'" else cell


def _clock_seconds(text: str) -> float | None:
    """Seconds of an elapsed-time clock ``[h:]m:s[.fff]``, or None."""
    match = _CLOCK.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600.0 + int(minutes) * 60.0 + float(seconds)


def read_text(
    path: str | Path,
    *,
    fs: float | None = None,
    units: str | None = None,
    lead_names: Sequence[str] | None = None,
    allow_missing_leads: bool = False,
) -> Record:
    """Read a delimited text ECG: a header row of lead names, then one row per sample.

    Header cells may carry units (``"V1 (uV)"``). A time column (``time``/``t`` in seconds,
    ``time_ms`` in milliseconds, or ``time (ms)``) gives the sampling rate when ``fs`` is not
    passed; an index column (``sample``, ``index``, unnamed) is ignored. Lines starting with
    ``#`` are comments (``# fs: 500``, ``# Sampling frequency: 0.5 kHz`` are understood; a rate
    line that disagrees with the time column is refused). A units row under the header (``mV``
    per lead, ``ms``/``s``/``hh:mm:ss.mmm`` for time, as PhysioNet's CSV export writes), single-quoted
    cells, an Excel ``sep=;`` line and decimal commas in ``;``-separated tables are read. Empty
    cells become NaN.

    Raises:
        RecordError: no header, a non-numeric cell (the message names row and column), a row
            with the wrong number of fields, unknown sampling rate, bad leads.
    """
    path = Path(path)
    lines = _read_lines(path)
    first, comment_fs = _skip_preamble(path, lines)
    delimiter = sniff_delimiter(path, lines[first])
    excel_sep = re.fullmatch(r"\s*sep=(.)\s*", lines[first])
    if excel_sep:  # Excel's "sep=;" line names the delimiter of the rows below
        lines[first] = "#"
        first, later_fs = _skip_preamble(path, lines)
        comment_fs = later_fs if later_fs is not None else comment_fs
        delimiter = excel_sep.group(1)
    warnings: list[str] = []
    header, body_start = _header_row(path, _split_cells(lines[first], delimiter), first, lead_names, warnings)
    columns = _Columns.from_header(path, header, lead_names, headerless=body_start == first)
    body_start = _units_row(path, lines, body_start, header, delimiter, columns)
    table = _parse_rows(path, lines[body_start:], body_start, header, delimiter, columns.roles)

    rate = fs if fs is not None else comment_fs
    if fs is None and columns.time:
        time_fs = _fs_from_time(
            path, table[:, columns.time[0]], columns.roles[columns.time[0]], header[columns.time[0]]
        )
        if rate is not None and abs(time_fs - rate) > 0.01 * rate:
            # Two statements of the rate in one file that disagree: either could be the wrong one.
            raise RecordError(
                path,
                f"the '# fs' line says {rate:g} Hz but the time column steps at {time_fs:g} Hz; "
                "pass --fs HZ to say which is right",
            )
        rate = time_fs
    if rate is None:
        raise RecordError(
            path,
            "sampling rate unknown (no time column, no '# fs:' line): "
            f'pass --fs HZ or a sidecar {path.stem}.json with {{"fs": HZ}}',
        )

    known = [u for u in columns.units if u is not None]
    channel_units: list[str | None] | None = columns.units if known else None
    meta: dict[str, Any] = {"format": "text", "warnings": warnings}
    return build_record(
        path,
        table[:, columns.leads].T,
        columns.names,
        fs=rate,
        channel_units=channel_units,
        record_id=path.stem,
        meta=meta,
        units_override=units,
        allow_missing_leads=allow_missing_leads,
    )


def _read_lines(path: Path) -> list[str]:
    """The decoded lines of a text table; binary data and OS errors become RecordError."""
    try:
        # Sniff the head before reading the whole file: a large binary file named .csv is refused
        # after 64 KiB, not after decoding gigabytes.
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise RecordError(path, f"not a text table: binary data (NUL bytes) in the first {len(head) // 1024} KiB")
        return decode_text(path.read_bytes()).splitlines()
    except OSError as exc:
        raise RecordError(path, f"cannot read text file: {type(exc).__name__}: {exc}") from None


def _skip_preamble(path: Path, lines: list[str]) -> tuple[int, float | None]:
    """Index of the first non-blank, non-comment line and the rate of a ``# fs: HZ`` comment above it."""
    comment_fs: float | None = None
    first = 0
    while first < len(lines) and (not lines[first].strip() or lines[first].lstrip().startswith("#")):
        match = _FS_COMMENT.match(lines[first].strip())
        if match and _is_number(match.group(3)):
            kilo = (match.group(2) or match.group(4) or "").lower() == "khz"
            comment_fs = float(match.group(3)) * (1000.0 if kilo else 1.0)
        first += 1
    if first >= len(lines):
        raise RecordError(path, "empty text file (no header, no samples)")
    return first, comment_fs


def _split_cells(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return [_unquote(cell) for cell in line.split()]
    return [_unquote(cell) for cell in next(csv.reader([line], delimiter=delimiter))]


def _units_row(
    path: Path, lines: list[str], start: int, header: list[str], delimiter: str | None, columns: _Columns
) -> int:
    """Where samples start: a units row under the header (``'mV'`` per lead, ``'seconds'`` or
    ``'hh:mm:ss.mmm'`` for time, as PhysioNet's CSV export writes) is read into ``columns`` and skipped."""
    from hubert_ecg.io.record import unit_scale_to_mv

    at = start
    while at < len(lines) and (not lines[at].strip() or lines[at].lstrip().startswith("#")):
        at += 1
    if at >= len(lines) or at == 0:
        return start
    cells = _split_cells(lines[at], delimiter)
    if len(cells) != len(header) or any(_is_number(c) or _DECIMAL_COMMA.match(c) for c in cells if c):
        return start
    lead_units = [cells[i] for i in columns.leads]
    if not any(unit_scale_to_mv(u) is not None for u in lead_units):
        return start
    for k, i in enumerate(columns.leads):
        stated = columns.units[k]
        if stated is not None and unit_scale_to_mv(stated) != unit_scale_to_mv(cells[i]):
            raise RecordError(path, f"column {header[i]!r}: header says {stated!r} but the units row says {cells[i]!r}")
        columns.units[k] = cells[i] or stated
    for i in columns.time:
        if not cells[i].strip():
            continue  # no unit given for the time column: its header decides
        role = _TIME_UNIT_ROLES.get(cells[i].strip().lower())
        if role is None:
            raise RecordError(path, f"time column {header[i]!r}: unknown time unit {cells[i]!r} in the units row")
        columns.roles[i] = role
    return at + 1


def _header_row(
    path: Path, header: list[str], first: int, lead_names: Sequence[str] | None, warnings: list[str]
) -> tuple[list[str], int]:
    """The column labels and the line index where samples start (``first`` when the file has no header)."""
    if not all(_is_number(cell) or _DECIMAL_COMMA.match(cell) for cell in header if cell):
        return header, first + 1
    if lead_names is None and len(header) != len(STANDARD_LEADS):
        raise RecordError(
            path,
            f"no header row of lead names and {len(header)} columns (first row is numeric); "
            "pass --lead-names NAME ... in column order",
        )
    if lead_names is None:
        warnings.append(
            "no header row; assumed 12 columns in standard lead order I, II, III, aVR, aVL, aVF, "
            "V1-V6 (pass --lead-names if not)"
        )
        return list(STANDARD_LEADS), first
    return list(lead_names), first


@dataclass
class _Columns:
    """What each column of a text table holds: its role, the lead columns with names and units, time columns."""

    roles: list[str]
    leads: list[int]
    time: list[int]
    names: list[str]
    units: list[str | None]

    @classmethod
    def from_header(
        cls, path: Path, header: list[str], lead_names: Sequence[str] | None, *, headerless: bool
    ) -> _Columns:
        roles = [_column_role(cell) for cell in header]
        leads = [i for i, role in enumerate(roles) if role == "lead"]
        time = [i for i, role in enumerate(roles) if role.startswith("time")]
        names = [split_unit_suffix(header[i])[0] for i in leads]
        units = [split_unit_suffix(header[i])[1] for i in leads]
        if lead_names is not None and not headerless:
            if len(lead_names) != len(leads):
                raise RecordError(path, f"{len(lead_names)} lead names given for {len(leads)} lead columns")
            names = list(lead_names)
        if not leads:
            raise RecordError(path, "no lead columns in header")
        return cls(roles, leads, time, names, units)


def _parse_rows(
    path: Path, lines: list[str], offset: int, header: list[str], delimiter: str | None, roles: list[str]
) -> np.ndarray:
    """The sample rows as a float64 table (empty/``nan``/``na`` cells are NaN); ``offset`` numbers lines in errors.

    Decimal commas (``0,123``) are read as decimal points in ``;``-separated tables;
    ``time_clock`` columns hold ``[h:]m:s.fff`` clocks, read as seconds."""
    rows: list[list[float]] = []
    # Only semicolon tables: ';' is chosen where ',' is the decimal mark. In a tab or space table "1,234"
    # may as well be a thousands separator, so it stays an error there rather than a guess.
    comma_decimals = delimiter == ";"
    for line_no, line in enumerate(lines, start=offset):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = _split_cells(line, delimiter)
        if len(cells) != len(header):
            raise RecordError(path, f"row {line_no + 1} has {len(cells)} fields, header has {len(header)}")
        values = []
        for column, cell in enumerate(cells):
            if cell == "" or cell.lower() in ("nan", "na"):
                values.append(np.nan)
                continue
            try:
                values.append(float(cell))
                continue
            except ValueError:
                pass
            if comma_decimals and _DECIMAL_COMMA.match(cell):
                values.append(float(cell.replace(",", ".")))
                continue
            clock = _clock_seconds(cell) if roles[column] == "time_clock" else None
            if clock is None:
                hint = " (a decimal comma is read only in ';'-separated tables)" if _DECIMAL_COMMA.match(cell) else ""
                raise RecordError(path, f"row {line_no + 1} column {header[column]!r}: not a number {cell!r}{hint}")
            values.append(clock)
        rows.append(values)
    if not rows:
        raise RecordError(path, "zero-length signal (header but no data rows)")
    return np.asarray(rows, dtype=np.float64)


def _fs_from_time(path: Path, time: np.ndarray, role: str, name: str) -> float:
    from hubert_ecg.io.quality import MIN_FS

    seconds = time / (1000.0 if role == "time_ms" else 1.0)
    if seconds.size < 2 or not np.all(np.isfinite(seconds)) or np.any(np.diff(seconds) <= 0):
        raise RecordError(path, "time column is not finite and strictly increasing; pass --fs HZ")
    # End-to-end span is immune to the rounding of printed time stamps; a gap or jump of half
    # a sample anywhere means the samples are not on one uniform grid.
    step = (seconds[-1] - seconds[0]) / (seconds.size - 1)
    grid = seconds[0] + step * np.arange(seconds.size)
    if np.max(np.abs(seconds - grid)) > 0.5 * step:
        raise RecordError(path, "time column is not uniformly sampled; pass --fs HZ")
    rate = 1.0 / step
    if role == "time_s" and rate < MIN_FS <= 1000.0 * rate:
        # A time column in ms read as seconds gives 1/1000 of the rate; refuse rather than mis-state it.
        raise RecordError(
            path,
            f"time column {name!r} steps by {step:g} per sample ({rate:g} Hz if seconds): "
            "it looks like milliseconds; name it time_ms or 'time (ms)', or pass --fs HZ",
        )
    return float(round(rate)) if abs(rate - round(rate)) < 1e-3 * rate else float(rate)
