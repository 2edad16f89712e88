"""The reader registry: one :class:`Format` entry per ECG file format.

An entry says how to recognise a file (suffixes, magic bytes at an offset, the root element of an
XML document, or a content check) and where its reader lives (``"module:function"``, imported
only when a file of that format is read, so one format's optional library never blocks another).
``read_record`` (dispatch) and ``iter_sources`` (folder walks) both ask this registry; neither
has a list of formats of its own.

Adding a format is one new module with a ``read_<fmt>(path, *, fs, units, lead_names,
allow_missing_leads)`` function that ends in :func:`hubert_ecg.io._build.build_record`, plus one
``register(Format(...))`` line at the bottom of this file (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import codecs
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Format", "register", "get_format", "format_names", "identify", "read_head", "xml_root_name", "HEAD_BYTES"]

#: Bytes read from the start of a file to recognise it (never more: a 1 GB file costs 4 KiB).
HEAD_BYTES = 4096


@dataclass(frozen=True)
class Format:
    """One readable ECG format.

    Attributes:
        name: canonical name (``--format`` choice, ``meta["format"]`` family).
        reader: ``"module:function"`` of the reader, imported on first use.
        suffixes: lower-case file suffixes (with the dot) that may hold this format.
        aliases: other names accepted by ``--format`` / ``read_record(fmt=...)``.
        magic: ``(offset, bytes)`` pairs; any match in the first :data:`HEAD_BYTES` identifies the format
            whatever the suffix.
        xml_roots: local names of XML root elements this format owns (an XML document is claimed by
            its root element, so several XML formats share ``.xml``).
        sniff: ``"module:function"`` of ``f(path, head) -> bool`` for checks beyond magic bytes (run
            only for files with one of ``suffixes``).
        keyed: files can hold several records addressed by a key (HDF5 CODE-15%).
        extra: the ``pip install hubert-ecg[EXTRA]`` that brings the format's library, if any.
        description: one line for the README / ``--help``.
    """

    name: str
    reader: str
    suffixes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    magic: tuple[tuple[int, bytes], ...] = ()
    xml_roots: tuple[str, ...] = ()
    sniff: str | None = None
    keyed: bool = False
    extra: str | None = None
    description: str = ""

    def load(self) -> Callable[..., Any]:
        """The reader function (imports its module now)."""
        return _resolve(self.reader)

    def claims(self, path: Path, head: bytes) -> bool:
        """True when the content of ``path`` (its first bytes ``head``) is this format."""
        if any(head[offset : offset + len(magic)] == magic for offset, magic in self.magic):
            return True
        if self.xml_roots and xml_root_name(head) in self.xml_roots:
            return True
        if self.sniff is not None:
            return bool(_resolve(self.sniff)(path, head))
        return False

    @property
    def checks_content(self) -> bool:
        return bool(self.magic or self.xml_roots or self.sniff)


_REGISTRY: dict[str, Format] = {}
_NAMES: dict[str, str] = {}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the registry (its name and aliases must be new)."""
    for name in (fmt.name, *fmt.aliases):
        key = name.lower()
        if key in _NAMES and _NAMES[key] != fmt.name:
            raise ValueError(f"format name {name!r} is already taken by {_NAMES[key]!r}")
        _NAMES[key] = fmt.name
    _REGISTRY[fmt.name] = fmt
    return fmt


def format_names() -> list[str]:
    """Canonical names in registration order (the ``--format`` choices)."""
    return list(_REGISTRY)


def get_format(name: str) -> Format | None:
    """The format called ``name`` (canonical, alias or suffix, any case, leading dot ignored)."""
    key = name.strip().lower().lstrip(".")
    canonical = _NAMES.get(key)
    return _REGISTRY[canonical] if canonical else None


def read_head(path: Path) -> bytes:
    """The first :data:`HEAD_BYTES` of a regular file (``OSError`` when it cannot be opened)."""
    with open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)


_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_ROOT = re.compile(r"<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")


def _decode_head(head: bytes) -> str:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return head[len(bom) :].decode(encoding, "ignore")
    if head[:4] in (b"<\x00?\x00", b"<\x00\x00\x00"):  # UTF-16/32 LE without a BOM
        return head.decode("utf-16-le", "ignore")
    if head[:4] == b"\x00<\x00?":
        return head.decode("utf-16-be", "ignore")
    return head.decode("latin-1")


def xml_root_name(head: bytes) -> str | None:
    """Local name of the root element of the XML document starting with ``head`` (any Unicode
    encoding, with or without BOM), or None when ``head`` does not look like XML."""
    text = _decode_head(head).lstrip()
    if not text.startswith("<"):
        return None
    # Skip the declaration, processing instructions, comments and the DOCTYPE.
    text = re.sub(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(\[.*?\])?\s*>", "", text, flags=re.S)
    match = _ROOT.search(text)
    return match.group(2) if match else None


def identify(path: Path, head: bytes | None = None, *, explicit: bool = False) -> Format | None:
    """The format of ``path`` from its suffix and content, or None.

    Among the formats listing the file's suffix, one whose content check passes claims it; else one
    that is recognised by its suffix alone (magic bytes are optional for it: MATLAB v4 has none).
    A format with a content sniff (text tables) or XML root claims a file in a folder walk only when
    the check passes; a file the user named (``explicit``) goes to its sniffing format anyway, so that
    the reader reports exactly what is wrong. Without a suffix match, the magic bytes and XML roots of
    every format are tried (a DICOM file named ``12345``).
    """
    suffix = path.suffix.lower()
    if head is None:
        head = read_head(path)
    by_suffix = [f for f in _REGISTRY.values() if suffix in f.suffixes]
    for fmt in by_suffix:
        if fmt.checks_content and fmt.claims(path, head):
            return fmt
    for fmt in by_suffix:
        if not fmt.xml_roots and (fmt.sniff is None or explicit):
            return fmt
    if by_suffix:
        return None
    for fmt in _REGISTRY.values():
        if (fmt.magic or fmt.xml_roots) and fmt.claims(path, head):
            return fmt
    return None


def xml_formats() -> list[Format]:
    """Formats recognised by their XML root element."""
    return [f for f in _REGISTRY.values() if f.xml_roots]


# ---------------------------------------------------------------------------------------------
# The formats. One line each; order matters only for formats sharing a suffix.
# ---------------------------------------------------------------------------------------------
_M = "hubert_ecg.io."
register(
    Format(
        "wfdb",
        _M + "wfdb_reader:read_wfdb",
        (".hea",),
        ("hea", "dat", "physionet"),
        description="WFDB/PhysioNet header + .dat or CinC .mat signal files",
    )
)
register(
    Format(
        "mat",
        _M + "arrays:read_matlab",
        (".mat",),
        ("matlab",),
        magic=((0, b"MATLAB"),),
        description="MATLAB .mat holding a (12, N) array (fs from an 'fs' variable, --fs or a sidecar)",
    )
)
register(
    Format(
        "numpy",
        _M + "arrays:read_numpy",
        (".npy", ".npz"),
        ("npy", "npz"),
        magic=((0, b"\x93NUMPY"),),
        description="NumPy .npy / .npz (fs from an 'fs' entry, --fs or a sidecar)",
    )
)
register(
    Format(
        "text",
        _M + "text:read_text",
        (".csv", ".tsv", ".txt"),
        ("csv", "tsv", "txt"),
        sniff=_M + "text:looks_like_ecg_table",
        description="CSV/TSV/TXT, one column per lead (fs: time column, '# fs:' line, --fs or a sidecar)",
    )
)
register(
    Format(
        "hdf5",
        _M + "hdf5:read_hdf5",
        (".h5", ".hdf5", ".hdf"),
        ("h5", "hdf"),
        magic=((0, b"\x89HDF\r\n\x1a\n"),),
        keyed=True,
        description="HDF5: CODE-15% (tracings, 400 Hz) and SPH (ecg, 500 Hz) layouts",
    )
)
register(
    Format(
        "dicom",
        _M + "dicom:read_dicom",
        (".dcm", ".dicom"),
        ("dcm",),
        magic=((128, b"DICM"),),
        description="DICOM 12-lead / general ECG waveform",
    )
)
register(
    Format(
        "muse",
        _M + "muse:read_muse",
        (".xml",),
        ("ge", "ge-muse"),
        xml_roots=("RestingECG",),
        description="GE MUSE XML (RestingECG)",
    )
)
register(
    Format(
        "hl7",
        _M + "hl7_aecg:read_hl7_aecg",
        (".xml",),
        ("aecg", "hl7-aecg"),
        xml_roots=("AnnotatedECG",),
        description="HL7 v3 annotated ECG (FDA aECG; Mortara/Welch Allyn, Schiller, GE and others)",
    )
)
register(
    Format(
        "philips",
        _M + "philips:read_philips",
        (".xml",),
        ("sierra", "pagewriter", "intellispace"),
        xml_roots=("restingecgdata",),
        extra="philips",
        description="Philips PageWriter / IntelliSpace (Sierra) XML 1.03/1.04, XLI-compressed or plain",
    )
)
register(
    Format(
        "edf",
        _M + "edf:read_edf",
        (".edf", ".bdf", ".rec"),
        ("bdf", "edf+", "bdf+"),
        magic=((0, b"0       "), (0, b"\xffBIOSEMI")),
        extra="edf",
        description="EDF / EDF+ / BDF / BDF+ (European Data Format)",
    )
)
