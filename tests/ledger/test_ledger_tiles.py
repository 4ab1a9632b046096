"""C2SP tlog-tiles hash tiles: paths, and tile bytes against the tree computed directly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledger_testkit import Note, open_log

from ledger import merkle
from ledger.errors import NotFoundError
from ledger.events import NewEvent
from ledger.tiles import TILE_WIDTH, Tile, available_width, parse_tile_path


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (Tile(0, 0, 256), "tile/0/000"),
        (Tile(4, 1234067, 256), "tile/4/x001/x234/067"),  # the spec's example index
        (Tile(4, 1234067, 1), "tile/4/x001/x234/067.p/1"),
        (Tile(1, 1000, 255), "tile/1/x001/000.p/255"),
        (Tile(7, 999, 256), "tile/7/999"),
    ],
)
def test_tile_paths_are_the_specs(tile: Tile, path: str) -> None:
    assert tile.path == path
    assert parse_tile_path(path) == tile


@given(
    level=st.integers(0, 7),
    index=st.integers(0, 2**53),
    width=st.integers(1, TILE_WIDTH),
)
def test_a_tile_path_round_trips(level: int, index: int, width: int) -> None:
    tile = Tile(level, index, width)
    assert parse_tile_path(tile.path) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/x000/001",  # a leading zero group: another spelling of tile/0/001
        "tile/0/1",
        "tile/0/0001",
        "tile/0/001/002",  # a group before the last without its x
        "tile/0/x001",  # the last group with one
        "tile/0/000.p/256",
        "tile/0/000.p/0",
        "tile/0/000.p/05",
        "tile/0/000.p/",
        "tile/0/000.p",
        "tile/8/000",
        "tile/-1/000",
        "tile/00/000",
        "tile/entries/000",
        "tile/data/000",
        "tile/0/",
        "tile/0",
        "tiles/0/000",
        "tile/0/٠٠٠",  # Arabic-Indic digits are digits to str.isdigit()
    ],
)
def test_paths_that_name_no_tile_are_not_found(path: str) -> None:
    with pytest.raises(NotFoundError, match="names no tile"):
        parse_tile_path(path)


@pytest.mark.parametrize(
    ("level", "index", "size", "width"),
    [
        (0, 0, 0, 0),
        (0, 0, 1, 1),
        (0, 0, 256, 256),
        (0, 0, 600, 256),
        (0, 2, 600, 88),
        (0, 3, 600, 0),
        (1, 0, 600, 2),
        (1, 0, 255, 0),
        (2, 0, 65536, 1),
    ],
)
def test_available_width(level: int, index: int, size: int, width: int) -> None:
    assert available_width(level, index, size) == width


async def test_tiles_hold_the_trees_hashes(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    try:
        seq = 0
        while seq < 600:
            batch = [NewEvent("note.added", Note(f"n{seq + i}")) for i in range(100)]
            await log.append("t1", "s", seq, batch)
            seq += 100
        leaves = [merkle.leaf_hash(r.leaf) for r in await log.read_log(0, 1000)]
        assert len(leaves) == 600

        def hashes(data: bytes) -> list[bytes]:
            assert len(data) % 32 == 0
            return [data[i : i + 32] for i in range(0, len(data), 32)]

        assert hashes(await log.tile(Tile(0, 0, 256))) == leaves[:256]
        assert hashes(await log.tile(Tile(0, 1, 256))) == leaves[256:512]
        assert hashes(await log.tile(Tile(0, 2, 88))) == leaves[512:600]
        # A partial tile narrower than what the tree holds: its first hashes, unchanged.
        assert hashes(await log.tile(Tile(0, 2, 10))) == leaves[512:522]
        # Level 1 lists the roots of whole 256-leaf subtrees.
        assert hashes(await log.tile(Tile(1, 0, 2))) == [
            merkle.root_hash(leaves[:256]),
            merkle.root_hash(leaves[256:512]),
        ]
        for missing in (Tile(0, 2, 89), Tile(0, 2, 256), Tile(0, 3, 1), Tile(1, 0, 3)):
            with pytest.raises(NotFoundError, match="is not in the tree of size 600"):
                await log.tile(missing)
    finally:
        await log.close()


async def test_an_empty_log_has_no_tiles(tmp_path: Path) -> None:
    log = await open_log(tmp_path / "l.db")
    try:
        with pytest.raises(NotFoundError, match="size 0"):
            await log.tile(Tile(0, 0, 1))
    finally:
        await log.close()
