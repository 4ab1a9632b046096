"""Named regressions for bugs found in the verifier."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.note import NoteSigner, sign_note
from verifier import verify_checkpoint
from verifier._note import parse_vkey


def _signer_whose_vkey_has_a_plus() -> NoteSigner:
    for seed in range(256):
        signer = NoteSigner(
            "plus.example/log", Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        )
        if signer.verifier.vkey.count("+") > 2:
            return signer
    raise AssertionError("no seed gave a vkey with '+' in its base64")


def test_regression_vkey_with_plus_in_base64_parses() -> None:
    """A standard-base64 key often contains '+': splitting on every '+' rejected it."""
    signer = _signer_whose_vkey_has_a_plus()
    parsed = parse_vkey(signer.verifier.vkey)
    assert parsed.public_key == signer.verifier.public_key
    note = sign_note(f"{signer.name}\n1\n{'A' * 43}=\n", signer)
    assert verify_checkpoint(note, signer.verifier.vkey).size == 1
