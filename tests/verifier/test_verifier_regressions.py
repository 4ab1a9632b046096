"""Named regressions for bugs found in the verifier."""

from __future__ import annotations

import pytest
import verifier_testkit as kit
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.note import NoteSigner, sign_note
from verifier import BundleIncomplete, verify_bundle, verify_checkpoint
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


def test_regression_receipt_of_tree_size_minus_one_is_not_checked_against_the_header() -> None:
    """The bundle loop started with ``receipt_size = -1`` as "no receipt cursor yet", so
    a first receipt claiming tree size -1 skipped the checkpoint lookup and was checked
    against the header checkpoint: with the header's proof in it, it verified."""
    b = kit.build_bundle(kit.scenario(n_steps=1, extra_per_step=0))
    first = next(line for line in b.lines if line["kind"] == "event")
    first["receipt"]["tree_size"] = -1
    first["receipt"]["inclusion_proof"] = first["inclusion_proof"]
    with pytest.raises(BundleIncomplete, match=r"the receipt's checkpoint \(tree size -1\)"):
        verify_bundle(b.encode(), b.vkey)
