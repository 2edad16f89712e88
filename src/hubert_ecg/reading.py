"""Reading records for batch jobs (``prepare``, ``predict``, ``embed``): one worker, one pool, one rejects table.

:func:`read_one` reads a record, refuses a physically implausible one (``unscorable``), preprocesses it
with the job's spec and runs the caller's own post-step on the result (store rows for ``prepare``,
model windows for ``predict``/``embed``), all inside the worker process. A record's own fault
(:data:`REJECTED_ERRORS`) becomes a :class:`Rejected` with a one-line reason; anything else is a bug
in this package and propagates, stopping the job instead of hiding among the rejects.

:func:`worker_pool` runs it in ``spawn`` processes (each limited to one BLAS thread) and
:class:`RejectsTable` writes the ``record_id, source, reason`` table both commands leave beside
their output.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .io.record import Record, RecordError, RecordSource
from .preprocess import PreprocessError, PreprocessSpec, preprocess_signal

#: What makes a record a reject rather than a failure of the job: RecordError (the file cannot be read or
#: fails validation; :func:`hubert_ecg.io.read_record` also turns a format library's exception on a damaged
#: file into one) and PreprocessError (the signal cannot be preprocessed: too short, non-finite, ...).
REJECTED_ERRORS: tuple[type[Exception], ...] = (RecordError, PreprocessError)

REJECT_COLUMNS = ("record_id", "source", "reason")


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadTask:
    """One record for a worker: where it is, how to read and preprocess it, and what to make of it.

    ``post(record, preprocessed)`` is the caller's step (a module-level function or a
    ``functools.partial`` of one, so that it pickles into a ``spawn`` worker); its value comes back
    in :class:`Accepted`. ``spec`` travels as plain data (``PreprocessSpec.to_dict()``).
    """

    source: RecordSource
    spec: dict[str, Any]
    read_kwargs: dict[str, Any]
    post: Callable[[Record, np.ndarray], Any]


@dataclass(frozen=True)
class Accepted:
    """A record read and preprocessed: ``value`` is what the task's post-step made of it."""

    source: RecordSource
    value: Any


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be used: ``reason`` is the first line of its error (it names the file)."""

    source: RecordSource
    reason: str


@dataclass(frozen=True)
class Unscorable:
    """A record that was read but is physically implausible (flat, saturated ...): not preprocessed.

    ``reason`` is the reader's ``unscorable`` note, ``quality`` the :func:`hubert_ecg.io.quality_label`
    cell (``unscorable: <reason>``); ``record_id``/``record_source`` are the record's own.
    """

    source: RecordSource
    record_id: str
    record_source: str
    reason: str
    quality: str
    missing_leads: str


ReadResult = Accepted | Rejected | Unscorable


def read_one(task: ReadTask) -> ReadResult:
    """Worker: read, check and preprocess one record, then run the task's post-step (see the module doc)."""
    from .io import quality_label, read_source

    src = task.source
    spec = PreprocessSpec.from_dict(task.spec)
    try:
        record = read_source(src, **task.read_kwargs)
        why = record.meta.get("unscorable")
        if why:  # read, but not a usable example: the caller decides (a reject, or a row without scores)
            quality, absent = quality_label(record), missing_leads(record)
            return Unscorable(src, record.record_id, record.source, str(why), quality, absent)
        value = task.post(record, preprocess_signal(record.signal, record.fs, spec))
    except REJECTED_ERRORS as err:  # the record's fault: one line in the rejects table
        return Rejected(src, str(err).splitlines()[0])
    return Accepted(src, value)


def missing_leads(record: Record) -> str:
    """Leads absent from the record (zeroed in the model input), comma-separated; "" for a full 12-lead record.

    The ``missing_leads`` column of predict/embed: a reduced-lead record is scored the way `evaluate --leads`
    measures, and the output says so (see docs/CLINICAL_EVALUATION.md).
    """
    from .preprocess import LEAD_NAMES
    from .preprocess import missing_leads as absent_rows

    absent = set(record.meta.get("missing_leads") or []) | {
        LEAD_NAMES[i] for i in np.flatnonzero(absent_rows(record.signal))
    }
    return ",".join(n for n in LEAD_NAMES if n in absent)


# ---------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------
def limit_blas_threads() -> Any:
    """Pin BLAS/OpenMP pools of this process to one thread; returns the limiter (None without threadpoolctl).

    Why: ``filtfilt``/``sosfiltfilt`` solve small systems (up to 150 x 150) in ``lfilter_zi``, five
    times per record. A multi-threaded OpenBLAS spends far longer waking and spinning its threads than
    solving, worst when the cores are already busy (prepare workers, other jobs): measured 27 ms per
    call with 2 threads on a loaded 2-core machine against 0.13 ms with one, so ~70-175 ms against
    ~9 ms per 10 s, 500 Hz record. Parallelism in ``prepare`` comes from worker processes instead.
    """
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency, so normally present
    except ImportError:  # pragma: no cover - then the library defaults stay, only slower
        return None
    return threadpool_limits(limits=1)


def _init_worker() -> None:
    """Pool initializer: one BLAS thread per worker process (see :func:`limit_blas_threads`)."""
    limit_blas_threads()


class WorkerPool:
    """``imap`` over worker processes, or in this process when there is no pool (``workers`` <= 1)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int = 1) -> Iterator[Any]:
        """``fn`` over ``items``, results in order, computed lazily."""
        return self.pool.imap(fn, items, chunksize=chunksize) if self.pool is not None else map(fn, items)


@contextmanager
def worker_pool(workers: int, *, limit_in_process: bool = False) -> Iterator[WorkerPool]:
    """A ``spawn`` pool of ``workers`` processes (one BLAS thread each), terminated on exit.

    With ``workers`` <= 1 the work runs here; ``limit_in_process`` then gives this process the same
    one-thread BLAS limit for the duration (``prepare``: nothing else runs), restored on exit. A model
    job leaves it off, since the limit would also reach the OpenMP threads of the network's forward.
    """
    pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker) if workers > 1 else None
    limiter = limit_blas_threads() if pool is None and limit_in_process else None
    try:
        yield WorkerPool(pool)
    finally:
        if pool is not None:
            pool.terminate()
        if limiter is not None:
            limiter.restore_original_limits()


# ---------------------------------------------------------------------------------------------
# The rejects table
# ---------------------------------------------------------------------------------------------
class RejectsTable:
    """``record_id, source, reason``: one row per record a job could not use, written atomically.

    ``prepare`` keeps one per shard and merges them into ``STORE/rejects.csv``; ``predict``/``embed``
    write ``OUT.rejects.csv``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: list[tuple[str, str, str]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, record_id: str, source: str, reason: str) -> None:
        self.rows.append((record_id, source, reason))

    def write(self, *, remove_if_empty: bool = False) -> Path | None:
        """Replace the file with the rows (header only when none); None and no file with ``remove_if_empty``.

        Removing matters for a job's output: a table left by an earlier run would describe other records.
        """
        if remove_if_empty and not self.rows:
            self.path.unlink(missing_ok=True)
            return None
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(REJECT_COLUMNS)
                writer.writerows(self.rows)
        return self.path

    @classmethod
    def read(cls, path: str | os.PathLike) -> RejectsTable:
        """The table written at ``path``."""
        table = cls(path)
        with open(table.path, newline="") as fh:
            table.rows = [(r["record_id"], r["source"], r["reason"]) for r in csv.DictReader(fh)]
        return table
