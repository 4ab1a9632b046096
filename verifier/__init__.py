"""MAIP Ledger's independent offline verifier.

It imports nothing from ``ledger`` or ``api``: it re-implements the verification half
of ``specs/log-format.md`` — RFC 9162 §2.1.3.2/§2.1.4.2 proofs, C2SP signed notes and
checkpoints, receipts (§4.1), offline bundles (§6.1) and the §7.3 replay — so that a
bug in the writer is not silently shared by its checker. It is also the independent
party that witnesses the log (§9): C2SP tlog-cosignature verification and signing, a
witness quorum for the checks above, and a C2SP tlog-witness (``maip-verify witness``).

Every ``verify_*`` function returns the verified value or raises a
:class:`VerificationError` subclass that says what failed.
"""

from verifier._bundle import Report, verify_bundle
from verifier._checkpoint import Checkpoint, verify_checkpoint
from verifier._cosignature import (
    Cosignature,
    WitnessKey,
    WitnessSigner,
    parse_witness_vkey,
    verify_cosignature,
)
from verifier._errors import (
    BundleIncomplete,
    CheckpointRefused,
    EventMismatch,
    FetchFailed,
    ForkDetected,
    MalformedInput,
    ProofInvalid,
    QuorumNotMet,
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
from verifier._quorum import WitnessPolicy, verify_witnessed, witness_policy
from verifier._receipt import VerifiedReceipt, verify_receipt
from verifier._replay import Timeline, build_timeline
from verifier._wire import Receipt
from verifier._witness import Witness

__all__ = [
    "BundleIncomplete",
    "Checkpoint",
    "CheckpointRefused",
    "Cosignature",
    "EventMismatch",
    "FetchFailed",
    "Fetcher",
    "ForkDetected",
    "MalformedInput",
    "MonitorResult",
    "ProofInvalid",
    "QuorumNotMet",
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
    "Witness",
    "WitnessKey",
    "WitnessPolicy",
    "WitnessSigner",
    "build_timeline",
    "monitor_once",
    "open_note",
    "parse_vkey",
    "parse_witness_vkey",
    "verify_bundle",
    "verify_checkpoint",
    "verify_consistency",
    "verify_cosignature",
    "verify_inclusion",
    "verify_receipt",
    "verify_witnessed",
    "witness_policy",
]
