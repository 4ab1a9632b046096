"""MAIP Ledger core: events, the Merkle log, signed checkpoints, storage and replay."""

from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.errors import (
    ConflictError,
    IntegrityError,
    InvalidEventError,
    LedgerError,
    NotFoundError,
    PayloadTooLargeError,
    ProofError,
    SignatureError,
    StorageUnavailableError,
    UnknownEventTypeError,
)
from ledger.events import (
    LEAF_VERSION,
    MAX_LEAF_BYTES,
    Event,
    EventCatalog,
    NewEvent,
    decode_leaf,
    encode_leaf,
)
from ledger.note import NoteSigner, NoteVerifier, open_note, sign_note
from ledger.tiles import Tile, parse_tile_path

__all__ = [
    "LEAF_VERSION",
    "MAX_LEAF_BYTES",
    "Checkpoint",
    "ConflictError",
    "Event",
    "EventCatalog",
    "IntegrityError",
    "InvalidEventError",
    "LedgerError",
    "NewEvent",
    "NotFoundError",
    "NoteSigner",
    "NoteVerifier",
    "PayloadTooLargeError",
    "ProofError",
    "SignatureError",
    "StorageUnavailableError",
    "Tile",
    "UnknownEventTypeError",
    "decode_leaf",
    "encode_leaf",
    "open_checkpoint",
    "open_note",
    "parse_tile_path",
    "sign_note",
]
