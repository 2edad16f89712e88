"""The shared loop of the resumable jobs (prepare, features, label) and the rejects table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hubert_ecg.reading import RejectsTable
from hubert_ecg.shards import BlockJob, chunks, rank_share


@pytest.mark.parametrize("n", [0, 1, 5, 16, 17])
@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_rank_shares_are_numpy_array_split_parts(n: int, world_size: int) -> None:
    items = np.arange(n)
    expected = np.array_split(items, world_size)
    for rank in range(world_size):
        assert rank_share(items, rank, world_size).tolist() == expected[rank].tolist()
        assert list(rank_share(range(n), rank, world_size)) == expected[rank].tolist()


def test_chunks_keep_order_and_a_short_last_block() -> None:
    assert list(chunks(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []


def test_done_blocks_are_skipped_marked_in_order_and_stop_after_raises_only_if_more_remain() -> None:
    done_before = {1}
    seen: list[int] = []
    marked: list[int] = []

    def run(stop_after: int | None) -> int:
        job = BlockJob(desc="t", unit="x", enabled=False, stop_after=stop_after, stopped=lambda: KeyError("stop"))
        return job.run(
            [0, 1, 2, 3],
            seen.append,
            size=lambda b: 1,
            done=lambda b: b in done_before or b in marked,
            mark_done=marked.append,
        )

    with pytest.raises(KeyError, match="stop"):
        run(stop_after=2)
    assert seen == marked == [0, 2]
    assert run(stop_after=1) == 1  # the last block: nothing remains after it, so no stop
    assert seen == marked == [0, 2, 3]


def test_rejects_table_round_trip_and_removal(tmp_path: Path) -> None:
    table = RejectsTable(tmp_path / "out.rejects.csv")
    assert table.write(remove_if_empty=True) is None and not table.path.exists()
    assert table.write() == table.path
    assert table.path.read_text().splitlines() == ["record_id,source,reason"]
    table.add("r1", "a/r1.hea", "a/r1.hea: cannot read, header says 3 leads")
    table.write()
    assert RejectsTable.read(table.path).rows == table.rows
