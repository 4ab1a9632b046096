"""The tree's hashes as C2SP ``tlog-tiles`` hash tiles (https://c2sp.org/tlog-tiles).

§ Merkle Tree: a tile of height 8 at level ``L`` and index ``N`` lists the hashes at tree
level ``8·L`` of the nodes ``256·N`` to ``256·N + W - 1``: a *full* tile when ``W`` is
256, else a *partial* one. Every hash in a tile is the root of a complete subtree, so
each is one of the log's stored hashes (:func:`ledger.tlog.stored_hash_index`), and a
tile, full or partial, never changes once the tree holds its hashes.

§ Paths: ``tile/<L>/<N>[.p/<W>]``, ``<N>`` in three-digit groups of which all but the
last take an ``x`` (index 1234067 is ``x001/x234/067``), and ``.p/<W>`` only for a
partial tile (``1 <= W < 256``). There is exactly one path per tile: anything else names
no tile.

Entry bundles (``tile/entries/...``) are not served: leaves are tenants' events, and
only hashes and signatures are public.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.errors import NotFoundError
from ledger.tlog import stored_hash_index

__all__ = ["TILE_HEIGHT", "TILE_WIDTH", "Tile", "available_width", "parse_tile_path"]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
#: Tree levels stop below 64 (a size fits in 64 bits), so tile levels stop at 7.
_MAX_LEVEL = 63 // TILE_HEIGHT
_MAX_GROUPS = 7  # 3-digit groups: 10**21 indexes, past the 2**56 tiles a level can have


@dataclass(frozen=True, slots=True)
class Tile:
    level: int
    index: int
    width: int

    @property
    def path(self) -> str:
        groups = []
        n = self.index
        while True:
            groups.append(f"{n % 1000:03d}")
            n //= 1000
            if not n:
                break
        digits = "/".join(["x" + g for g in reversed(groups[1:])] + [groups[0]])
        partial = f".p/{self.width}" if self.width < TILE_WIDTH else ""
        return f"tile/{self.level}/{digits}{partial}"

    def hash_indexes(self) -> list[int]:
        """The stored hashes the tile lists, in order."""
        level, first = self.level * TILE_HEIGHT, self.index * TILE_WIDTH
        return [stored_hash_index(level, first + i) for i in range(self.width)]


def _decimal(text: str, digits: int) -> int | None:
    if len(text) != digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_tile_path(path: str) -> Tile:
    """The tile ``path`` (``tile/...``) names; NotFoundError if it names none."""
    parts = path.split("/")
    width = TILE_WIDTH
    if len(parts) >= 4 and parts[-2].endswith(".p"):
        w = parts.pop()
        parts[-1] = parts[-1].removesuffix(".p")
        # Canonical decimal, 1..255: one path per tile.
        if not (w.isascii() and w.isdigit() and w == str(int(w)) and 0 < int(w) < TILE_WIDTH):
            raise NotFoundError(f"{path!r} names no tile: a partial width is 1..255")
        width = int(w)
    level = _decimal(parts[1], 1) if len(parts) >= 3 and parts[0] == "tile" else None
    groups = parts[2:]
    if level is None or level > _MAX_LEVEL or not 0 < len(groups) <= _MAX_GROUPS:
        raise NotFoundError(f"{path!r} names no tile: tile/<level 0-7>/<index>[.p/<width>]")
    index = 0
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        value = _decimal(group if last else group.removeprefix("x"), 3)
        if value is None or (not last and not group.startswith("x")):
            raise NotFoundError(f"{path!r} names no tile: index groups are x000/.../000")
        index = index * 1000 + value
    tile = Tile(level, index, width)
    if tile.path != path:  # leading zero groups: another spelling of a shorter path
        raise NotFoundError(f"{path!r} names no tile: its index is spelled {tile.path!r}")
    return tile


def available_width(level: int, index: int, tree_size: int) -> int:
    """How many hashes tile (``level``, ``index``) has in a tree of ``tree_size``."""
    nodes = tree_size >> (TILE_HEIGHT * level)  # complete subtrees at the tile's level
    return max(0, min(TILE_WIDTH, nodes - index * TILE_WIDTH))
