"""MAIP Ledger's independent offline verifier.

It imports nothing from ``ledger`` or ``api``: it re-implements the verification half
of ``specs/log-format.md`` — RFC 9162 §2.1.3.2/§2.1.4.2 proofs, C2SP signed notes and
checkpoints, receipts (§4.1), offline bundles (§6.1) and the §7.3 replay — so that a
bug in the writer is not silently shared by its checker.

Every ``verify_*`` function returns the verified value or raises a
:class:`VerificationError` subclass that says what failed.
"""

from verifier._bundle import Report, verify_bundle
from verifier._checkpoint import Checkpoint, verify_checkpoint
from verifier._errors import (
    BundleIncomplete,
    EventMismatch,
    FetchFailed,
    ForkDetected,
    MalformedInput,
    ProofInvalid,
    ReceiptMismatch,
    ReplayInvalid,
    RollbackDetected,
    SignatureInvalid,
    StateMismatch,
    UnsupportedLeafVersion,
    VerificationError,
)
from verifier._merkle import verify_consistency, verify_inclusion
from verifier._monitor import Fetcher, MonitorResult, monitor_once
from verifier._note import VerifierKey, open_note, parse_vkey
from verifier._receipt import VerifiedReceipt, verify_receipt
from verifier._replay import Timeline, build_timeline
from verifier._wire import Receipt

__all__ = [
    "BundleIncomplete",
    "Checkpoint",
    "EventMismatch",
    "FetchFailed",
    "Fetcher",
    "ForkDetected",
    "MalformedInput",
    "MonitorResult",
    "ProofInvalid",
    "Receipt",
    "ReceiptMismatch",
    "ReplayInvalid",
    "Report",
    "RollbackDetected",
    "SignatureInvalid",
    "StateMismatch",
    "Timeline",
    "UnsupportedLeafVersion",
    "VerificationError",
    "VerifiedReceipt",
    "VerifierKey",
    "build_timeline",
    "monitor_once",
    "open_note",
    "parse_vkey",
    "verify_bundle",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_receipt",
]
