"""Test scaffolding that plays the coordinator's part in signed calls
(proto/src/signature.rs, the CallSigner): a coordinator key made for the
test run, that signs a call as the coordinator does, and the keys of the
real coordinators the Rust test harness started.

The SDK itself never signs (only the coordinator does): this lives with the
tests, so that a participant under test is called the way the coordinator
calls it and its check runs on every call.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from concord_participant import TrustedKeys
from concord_participant._proto.concord.v1 import participant_pb2 as pb
from concord_participant.signature import (
    SIGNATURE_HEADER,
    SignedCall,
    batch_payload,
    key_id,
    signed_bytes,
)

#: A signature is good for this long, as the coordinator's (a call's
#: deadline and its CLOCK_SLACK) would be.
GOOD_FOR_MS = 90_000

#: Batch entry kinds, and the method each is signed as.
METHODS = {
    "prepare": "Prepare",
    "commit": "Commit",
    "abort": "Abort",
    "commit_one_phase": "CommitOnePhase",
    "execute": "Execute",
    "compensate": "Compensate",
    "deliver": "Deliver",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed_entry(call: pb.BatchCall) -> SignedCall:
    """What the coordinator signs of a Batch entry (batch_entry in
    signature.rs), read here from the entry itself rather than by the SDK's
    own `batch_entry`, so that the participant's reading is checked too."""
    kind = call.WhichOneof("call")
    if kind is None:
        return SignedCall("", "", "", b"")
    request = getattr(call, kind)
    ref = request.branch
    return SignedCall(METHODS[kind], ref.transaction_id, ref.branch, request.payload)


class CoordinatorKey:
    """An Ed25519 key standing for a deployment's coordinators."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.id = key_id(raw)

    @property
    def public_pem(self) -> str:
        """As `openssl pkey -pubout` writes it."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def trusted(self) -> TrustedKeys:
        """The keys a participant called by this coordinator trusts."""
        return TrustedKeys.from_pem(self.public_pem)

    def sign(
        self,
        method: str,
        transaction_id: str,
        branch: str,
        payload: bytes,
        expires_ms: int | None = None,
    ) -> str:
        """The call's signature, as it travels."""
        expires = now_ms() + GOOD_FOR_MS if expires_ms is None else expires_ms
        signature = self._key.sign(signed_bytes(method, transaction_id, branch, payload, expires))
        encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        return f"v1.{self.id}.{expires}.{encoded}"

    def sign_request(self, method: str, request: Any, expires_ms: int | None = None) -> str:
        """The signature of `request` sent as `method`: the fields the
        coordinator signs read from the request itself."""
        if method == "CheckMessage":
            return self.sign(method, request.transaction_id, "", b"", expires_ms)
        ref = request.branch
        return self.sign(method, ref.transaction_id, ref.branch, request.payload, expires_ms)

    def metadata(self, method: str, request: Any) -> tuple[tuple[str, str]]:
        """The metadata of `request` sent alone, signed."""
        return ((SIGNATURE_HEADER, self.sign_request(method, request)),)

    def sign_batch(self, calls: Iterable[pb.BatchCall], expires_ms: int | None = None) -> str:
        """The signature of a whole Batch of `calls`, as the coordinator
        signs one: method "Batch", no transaction or branch, its entries
        framed in order as the payload."""
        payload = batch_payload(signed_entry(call) for call in calls)
        return self.sign("Batch", "", "", payload, expires_ms)

    def batch_metadata(
        self, calls: Iterable[pb.BatchCall], expires_ms: int | None = None
    ) -> tuple[tuple[str, str]]:
        """The metadata of a Batch of `calls`, signed as a whole."""
        return ((SIGNATURE_HEADER, self.sign_batch(calls, expires_ms)),)

    def batch_call(self, **call: Any) -> pb.BatchCall:
        """A Batch entry (`prepare=...`, `execute=...`, ...) signed on its
        own (`BatchCall.signature`)."""
        ((kind, request),) = call.items()
        return pb.BatchCall(signature=self.sign_request(METHODS[kind], request), **call)


class SignedStub:
    """A Participant stub whose calls carry `key`'s signature, as the
    coordinator's do: a single call signed alone, a Batch signed once as a
    whole (unless `sign_batches=False`: then only the entries signed on
    their own, `batch_call`, are)."""

    def __init__(self, stub: Any, key: CoordinatorKey, sign_batches: bool = True) -> None:
        self._stub = stub
        self._key = key
        self._sign_batches = sign_batches

    def __getattr__(self, method: str) -> Any:
        call = getattr(self._stub, method)
        if method == "Batch":
            if not self._sign_batches:
                return call

            def signed_batch(request: pb.BatchRequest, **kwargs: Any) -> Any:
                return call(request, metadata=self._key.batch_metadata(request.calls), **kwargs)

            return signed_batch

        def signed(request: Any, **kwargs: Any) -> Any:
            return call(request, metadata=self._key.metadata(method, request), **kwargs)

        return signed


#: The key the participants of this test run trust, for calls the tests
#: make themselves.
TEST_KEY = CoordinatorKey()

#: Set by the Rust test that runs this suite (tests/tests/python): a PEM
#: file of the public key of every coordinator it started.
COORDINATOR_KEY_FILE = os.environ.get("CONCORD_TEST_COORDINATOR_PUBLIC_KEY", "")


def coordinator_keys() -> TrustedKeys:
    """What a participant called by the real coordinators trusts (skipping
    the test when none was started)."""
    if not COORDINATOR_KEY_FILE:
        if os.environ.get("CONCORD_TEST_COORDINATOR_URL") or os.environ.get(
            "CONCORD_TEST_GROUP_URLS"
        ):
            pytest.fail(
                "a coordinator was started but CONCORD_TEST_COORDINATOR_PUBLIC_KEY is not set: "
                "it signs its calls, and its participants must trust its key"
            )
        pytest.skip("CONCORD_TEST_COORDINATOR_PUBLIC_KEY is not set (cargo test sets it)")
    return TrustedKeys.from_file(COORDINATOR_KEY_FILE)
