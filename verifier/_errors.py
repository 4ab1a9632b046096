"""The verifier's exception hierarchy: one root, :class:`VerificationError`.

Subclass names (``SignatureInvalid``, ``ProofInvalid``, ...) are the public API that
issue 5 specifies, hence no ``Error`` suffix.

Every public ``verify_*`` function returns the verified value (or ``None``) or raises a
subclass of :class:`VerificationError` whose message says exactly what failed. Foreign
errors (msgspec, cryptography, binascii) are translated with ``raise X(...) from e``.

``step`` names the ``specs/log-format.md`` step that failed (e.g. ``"6.1 step 2
(inclusion)"``) when the error comes from a multi-step routine; the CLI prints it.
"""

from __future__ import annotations

__all__ = [
    "BundleIncomplete",
    "CheckpointRefused",
    "EventMismatch",
    "FetchFailed",
    "ForkDetected",
    "MalformedInput",
    "ProofInvalid",
    "QuorumNotMet",
    "ReceiptMismatch",
    "ReplayInvalid",
    "RollbackDetected",
    "SignatureInvalid",
    "StateMismatch",
    "UnsupportedLeafVersion",
    "VerificationError",
]


class VerificationError(Exception):
    """Root of every error the verifier raises."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        #: Labelled texts that show the failure (e.g. the trusted and the received
        #: checkpoint); the CLI prints them.
        self.evidence: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.step}: {self.message}" if self.step else self.message

    def at_step(self, step: str) -> VerificationError:
        """Attach the failing step (kept if one is already set); returns ``self``."""
        if self.step is None:
            self.step = step
        return self


class MalformedInput(VerificationError, ValueError):  # noqa: N818 - names fixed by issue 5
    """Input that cannot be parsed: bad JSON, base64, key, note or checkpoint syntax."""


class UnsupportedLeafVersion(MalformedInput):
    """A leaf whose format version ``v`` this verifier does not know (§2 "Versioning")."""


class SignatureInvalid(VerificationError):  # noqa: N818 - names fixed by issue 5
    """A signed note has no valid signature by the trusted key, or a bad one (§3)."""


class ProofInvalid(VerificationError):  # noqa: N818 - names fixed by issue 5
    """An inclusion or consistency proof does not verify (RFC 9162 §2.1.3.2, §2.1.4.2)."""


class ReceiptMismatch(VerificationError):  # noqa: N818 - names fixed by issue 5
    """A receipt disagrees with its leaf or checkpoint (§4.1 steps 2-4)."""


class EventMismatch(VerificationError):  # noqa: N818 - names fixed by issue 5
    """An event does not belong to the bundle's tenant or orchestration (§6.1 step 3)."""


class BundleIncomplete(VerificationError):  # noqa: N818 - names fixed by issue 5
    """Events are missing, repeated or out of order, or a bundle part is absent (§6.1)."""


class ReplayInvalid(VerificationError):  # noqa: N818 - names fixed by issue 5
    """The event stream cannot be folded into a state (§7.3), e.g. a step never started."""


class StateMismatch(VerificationError):  # noqa: N818 - names fixed by issue 5
    """The state the server claims differs from the state replayed from the events."""

    def __init__(self, differences: tuple[str, ...], *, step: str | None = None) -> None:
        shown = "; ".join(differences[:10])
        more = f" (and {len(differences) - 10} more)" if len(differences) > 10 else ""
        super().__init__(f"claimed state differs from replay: {shown}{more}", step=step)
        self.differences = differences


class ForkDetected(VerificationError):  # noqa: N818 - names fixed by issue 5
    """Two checkpoints that cannot both be honest: same size and different roots, or a
    newer tree that is not an extension of a trusted older one (§3)."""

    def __init__(self, message: str, *, old_checkpoint: str, new_checkpoint: str) -> None:
        super().__init__(message)
        self.old_checkpoint = old_checkpoint
        self.new_checkpoint = new_checkpoint
        self.evidence = (
            ("trusted checkpoint", old_checkpoint),
            ("log's checkpoint", new_checkpoint),
        )


class RollbackDetected(VerificationError):  # noqa: N818 - names fixed by issue 5
    """The log presents a smaller tree than one already trusted."""

    def __init__(self, message: str, *, old_checkpoint: str, new_checkpoint: str) -> None:
        super().__init__(message)
        self.old_checkpoint = old_checkpoint
        self.new_checkpoint = new_checkpoint
        self.evidence = (
            ("trusted checkpoint", old_checkpoint),
            ("log's checkpoint", new_checkpoint),
        )


class FetchFailed(VerificationError):  # noqa: N818 - names fixed by issue 5
    """The monitor could not fetch what it needs from the log (network or HTTP error).

    ``status`` is the HTTP status the log answered, if it answered one: a 404 for the
    latest checkpoint is how a log says it is empty.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class QuorumNotMet(VerificationError):  # noqa: N818 - named like the issue 5 errors
    """A checkpoint lacks valid cosignatures from the required number of the witnesses
    the user trusts (``specs/log-format.md`` §9.5). ``missing`` lists the vkeys of the
    trusted witnesses whose cosignature is absent."""

    def __init__(self, message: str, *, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.missing = missing


class CheckpointRefused(VerificationError):  # noqa: N818 - named like the issue 5 errors
    """The witness will not cosign a submitted checkpoint (``specs/log-format.md`` §9.3).

    ``status`` is the C2SP tlog-witness HTTP status for the reason; ``size`` is the
    witness's latest cosigned size for a 409 that reports it (``text/x.tlog.size``).
    """

    def __init__(self, status: int, message: str, *, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.size = size
