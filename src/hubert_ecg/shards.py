"""One skeleton for the jobs that can be killed and re-run: ``prepare``, ``features`` and ``label``.

Each cuts its work into blocks in a fixed order, so a re-run forms the same blocks; skips the blocks
already done (their files on disk say so); optionally takes only this rank's contiguous share; does
each remaining block and marks it done atomically (the last file written, or a progress record);
and can stop on request after some blocks (``stop_after``, how the tests cut a job short).

>>> job = BlockJob(desc="label r0", unit="ECG", enabled=False)            # doctest: +SKIP
>>> job.run(blocks, do_block, done=is_done, mark_done=record_done)        # doctest: +SKIP

What a block is, where it goes and how "done" is recorded stay with each job: the on-disk formats
differ, only the loop is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class _Sliceable(Protocol):
    """A list, range or NumPy array: what a rank's share is cut from."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any, /) -> Any: ...


S = TypeVar("S", bound=_Sliceable)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter), consumed lazily."""
    block: list[T] = []
    for item in items:
        block.append(item)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def rank_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous share of ``n`` items (``numpy.array_split``'s parts).

    The first ``n % world_size`` ranks take one item more, so every rank can compute every rank's share
    (the finishing rank checks them all) without talking to the others.
    """
    each, extra = divmod(n, world_size)
    lo = rank * each + min(rank, extra)
    return lo, lo + each + (1 if rank < extra else 0)


def rank_share(items: S, rank: int, world_size: int) -> S:
    """Rank ``rank``'s contiguous share of ``items`` (a list, range or array), see :func:`rank_bounds`."""
    lo, hi = rank_bounds(len(items), rank, world_size)
    return items[lo:hi]


class BlockJob:
    """The loop of a resumable job: skip done blocks, do the rest in order, mark each done, show progress.

    ``stopped`` builds the exception raised when ``stop_after`` blocks were done in this run and more
    remain (each job words it its own way); a job that finishes within ``stop_after`` does not raise.
    A block's work may advance the bar itself (:meth:`advance`, e.g. per batch); whatever it leaves
    unreported is added when the block is done.
    """

    def __init__(
        self,
        *,
        desc: str,
        unit: str,
        enabled: bool = True,
        stop_after: int | None = None,
        stopped: Callable[[], Exception] | None = None,
    ) -> None:
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.stop_after, self.stopped = stop_after, stopped
        self.bar: Any = None
        self._advanced = 0

    def run(
        self,
        blocks: Iterable[T],
        do_block: Callable[[T], None],
        *,
        size: Callable[[T], int] | None = None,
        done: Callable[[T], bool] | None = None,
        mark_done: Callable[[T], None] | None = None,
        total: int | None = None,
        initial: int = 0,
    ) -> int:
        """Do every block of ``blocks`` not ``done``; returns the number done by this run.

        The bar counts ``size`` units per block: out of ``total`` from ``initial`` when given (a job
        whose done blocks were filtered out before, such as ``prepare``), else out of all ``blocks``
        (then a sequence), starting at the size of the done ones. ``size`` defaults to ``len``.
        """
        size_of: Callable[[T], int] = size if size is not None else len  # type: ignore[assignment]
        if done is not None:
            blocks = list(blocks)
            todo = [b for b in blocks if not done(b)]
            if total is None:
                total = sum(size_of(b) for b in blocks)
                initial = total - sum(size_of(b) for b in todo)
            blocks = todo
        self.bar = _bar(total=total, initial=initial, desc=self.desc, unit=self.unit, enabled=self.enabled)
        n_done = 0
        try:
            for block in blocks:
                if self.stop_after is not None and n_done >= self.stop_after:
                    raise (self.stopped or _default_stop(self.stop_after))()
                self._advanced = 0
                do_block(block)
                if mark_done is not None:
                    mark_done(block)
                self.bar.update(max(0, size_of(block) - self._advanced))
                n_done += 1
        finally:
            self.bar.close()
        return n_done

    def advance(self, n: int) -> None:
        """Move the bar by ``n`` units from inside a block (counted against the block's size)."""
        self._advanced += n
        self.bar.update(n)


def _default_stop(n: int) -> Callable[[], Exception]:
    return lambda: RuntimeError(f"stopped after {n} blocks (incomplete); re-run the same command to finish")


def _bar(*, total: int | None, initial: int, desc: str, unit: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
