"""Signed participant calls, the participant's side (DESIGN §12; the
format's reference is proto/src/signature.rs): the coordinator signs every call it makes to a
participant with its deployment's Ed25519 key, and a participant obeys only
a call signed by a key it trusts. This module owns checking a signature
(`TrustedKeys.verify`, `verify_batch` for a whole Batch) and reading the trusted keys (`TrustedKeys.from_pem`,
`from_file`); it signs nothing (only the coordinator does) and decides
nothing about serving (`server` refuses what this module rejects).

The format is proto/src/signature.rs's, to the byte and to the error:
`sdk/signature-cases.json`, written by the Rust tests, pins it for this SDK
(tests/test_signature_cases.py). What is signed, for each call:

    b"concord-call-v1\\0"
    u32be len | method          ("Prepare", "Commit", ..., "CheckMessage")
    u32be len | transaction id
    u32be len | branch          ("" for CheckMessage)
    sha256(payload)             (32 bytes; of b"" for CheckMessage)
    u64be expires               (Unix milliseconds)

A `Batch` is signed once, as a whole: the method `Batch`, an empty
transaction id and branch, and as payload every entry in order, each framed
as above without the domain and the expiry (`batch_payload`):

    u32be len | method          ("" for an entry that names no call)
    u32be len | transaction id
    u32be len | branch
    sha256(payload)             (32 bytes)

An entry may instead carry a signature of its own (`BatchCall.signature`,
as for the call alone), checked when the batch's is missing or does not
verify.

The signature travels as `v1.<key id>.<expires>.<signature>`: in the
`concord-signature` metadata of a call (a Batch too), or in
`BatchCall.signature` for an entry signed alone. The key id is the first 8
bytes of the SHA-256 of the raw public key, in hex; the signature is
base64url without padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
import time
from collections.abc import Iterable
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._proto.concord.v1 import participant_pb2 as pb

#: The metadata key a call sent alone carries its signature in.
SIGNATURE_HEADER = "concord-signature"

#: How long past its call's deadline the coordinator makes a signature good
#: for: the slack for clocks that differ between its host and the
#: participant's (CLOCK_SLACK in signature.rs; only named in a refusal here).
CLOCK_SLACK_S = 60

#: Longer than any well-formed signature (`v1`, 16 hex digits, at most 20
#: digits of expiry, 86 of base64url and three dots come to 127): anything
#: longer is refused before it is parsed, as signature.rs does.
MAX_SIGNATURE_LEN = 160

#: Every method a participant is called with, as the coordinator names it.
METHODS = (
    "Prepare",
    "Commit",
    "Abort",
    "CommitOnePhase",
    "Execute",
    "Compensate",
    "Deliver",
    "CheckMessage",
)

#: The method name a whole Batch is signed under.
BATCH_METHOD = "Batch"

#: The method each kind of Batch entry (BatchCall's `call` oneof) is signed
#: as.
BATCH_ENTRY_METHODS = {
    "prepare": "Prepare",
    "commit": "Commit",
    "abort": "Abort",
    "commit_one_phase": "CommitOnePhase",
    "execute": "Execute",
    "compensate": "Compensate",
    "deliver": "Deliver",
}

_DOMAIN = b"concord-call-v1\0"
#: The DER of an Ed25519 SubjectPublicKeyInfo up to its 32 key bytes: a
#: PUBLIC KEY block is this and the key, nothing else (signature.rs's check).
_SPKI_ED25519_PREFIX = bytes.fromhex("302a300506032b6570032100")
_U64_MAX = 2**64 - 1
_EXPIRY = re.compile(r"\+?[0-9]+")  # what Rust's u64 parse takes
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_PEM_BLOCK = re.compile(
    r"-----BEGIN ([^\r\n-][^\r\n]*?)-----(.*?)-----END \1-----", re.DOTALL
)


def signed_bytes(
    method: str, transaction_id: str, branch: str, payload: bytes, expires_ms: int
) -> bytes:
    """The bytes a call's signature is made over (the module's picture)."""
    out = bytearray(_DOMAIN)
    _framed(out, method, transaction_id, branch)
    out += hashlib.sha256(payload).digest()
    out += struct.pack(">Q", expires_ms)
    return bytes(out)


class SignedCall(NamedTuple):
    """The one call a signature is about (SignedCall in signature.rs)."""

    method: str
    transaction_id: str
    #: The branch, step or destination; "" for CheckMessage.
    branch: str
    #: The call's payload; b"" for CheckMessage.
    payload: bytes


def _framed(out: bytearray, method: str, transaction_id: str, branch: str) -> None:
    """Appends the three fields to `out`, each framed by its length."""
    for field in (method, transaction_id, branch):
        raw = field.encode()
        out.extend(struct.pack(">I", len(raw)))
        out.extend(raw)


def batch_payload(entries: Iterable[SignedCall]) -> bytes:
    """The payload a whole Batch is signed over: each entry framed in order
    (the module's picture). Signed as the call (BATCH_METHOD, "", "", this)."""
    out = bytearray()
    for entry in entries:
        _framed(out, entry.method, entry.transaction_id, entry.branch)
        out += hashlib.sha256(entry.payload).digest()
    return bytes(out)


#: What an entry that names no call is framed as (it is refused on its own
#: anyway).
_NO_CALL = SignedCall("", "", "", b"")


def batch_entry(call: pb.BatchCall) -> SignedCall:
    """What a Batch entry's signature covers: its method, branch and
    payload (each "" when the entry names no call, or its request no
    branch)."""
    kind = call.WhichOneof("call")
    if kind is None:
        return _NO_CALL
    request = getattr(call, kind)
    ref = request.branch
    return SignedCall(BATCH_ENTRY_METHODS[kind], ref.transaction_id, ref.branch, request.payload)


def batch_payload_of(calls: Iterable[pb.BatchCall]) -> bytes:
    """The payload a Batch of `calls` (BatchRequest.calls) is signed over."""
    return batch_payload(batch_entry(call) for call in calls)


def key_id(public_key: bytes) -> str:
    """The short name of a raw 32-byte public key, as signatures and
    refusals name it: the first 8 bytes of its SHA-256, in hex."""
    return hashlib.sha256(public_key).digest()[:8].hex()


class SignatureError(Exception):
    """Why a call's signature was refused. `kind` is what went wrong, as
    signature.rs's SignatureError and the cases file name it: "missing",
    "malformed", "unknown_key", "mismatch" or "expired"; the message (the
    Rust error's, word for word) says what to fix."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @classmethod
    def missing(cls) -> SignatureError:
        return cls(
            "missing",
            "the call is not signed: this participant obeys only a coordinator whose key it "
            "trusts (concord serve --signing-key)",
        )

    @classmethod
    def malformed(cls, why: str) -> SignatureError:
        return cls("malformed", f"the call's signature is malformed: {why}")

    @classmethod
    def unknown_key(cls, key: str) -> SignatureError:
        return cls(
            "unknown_key",
            f"the call is signed with key {key[:16]}, which this participant does not trust",
        )

    @classmethod
    def expired(cls, ago_ms: int) -> SignatureError:
        return cls(
            "expired",
            f"the call's signature expired {ago_ms} ms ago (a replayed call, or clocks more "
            f"than {CLOCK_SLACK_S} s apart)",
        )

    @classmethod
    def mismatch(cls) -> SignatureError:
        return cls(
            "mismatch",
            "the call's signature does not match it (signed for another method, transaction, "
            "branch or payload)",
        )


class KeyFileError(ValueError):
    """A trusted-keys file that cannot be used: not PEM, a block that is
    not a PUBLIC KEY, a key that is not Ed25519, or no key at all."""


class TrustedKeys:
    """The coordinator keys a participant trusts: every call must be signed
    by one of them. A file may hold several (the current key and the next,
    so a new key is trusted before the coordinators switch to it)."""

    def __init__(self, public_keys: list[bytes]) -> None:
        """From raw 32-byte Ed25519 public keys; `from_pem` and `from_file`
        read them as `openssl pkey -pubout` writes them."""
        if not public_keys:
            raise KeyFileError("no PUBLIC KEY block found")
        self._keys: dict[str, Ed25519PublicKey] = {}
        for raw in public_keys:
            if len(raw) != 32:
                raise KeyFileError("not an Ed25519 key: a public key is 32 bytes")
            try:
                self._keys[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError as error:
                raise KeyFileError(f"not an Ed25519 key: {error}") from error

    @classmethod
    def from_pem(cls, text: str | bytes) -> TrustedKeys:
        """The keys of every `PUBLIC KEY` block in `text` (SubjectPublicKeyInfo,
        Ed25519); any other block is an error, as is no block."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError as error:
                raise KeyFileError(f"not PEM: {error}") from error
        keys = []
        for label, body in _PEM_BLOCK.findall(text):
            if label != "PUBLIC KEY":
                raise KeyFileError(f"expected a PUBLIC KEY PEM block, found {label}")
            try:
                der = base64.b64decode("".join(body.split()), validate=True)
            except binascii.Error as error:
                raise KeyFileError(f"not PEM: {error}") from error
            if not der.startswith(_SPKI_ED25519_PREFIX) or len(der) != len(_SPKI_ED25519_PREFIX) + 32:
                raise KeyFileError(
                    "not an Ed25519 key: a PUBLIC KEY that is not 32 bytes of Ed25519"
                )
            keys.append(der[len(_SPKI_ED25519_PREFIX) :])
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustedKeys:
        """The keys in the PEM file at `path` (an OSError when it cannot be
        read; a KeyFileError naming the file when it holds no usable key)."""
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read()
        try:
            return cls.from_pem(text)
        except KeyFileError as error:
            raise KeyFileError(f"{os.fspath(path)}: {error}") from error

    @property
    def ids(self) -> list[str]:
        """The ids of the trusted keys, as signatures name them."""
        return list(self._keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({', '.join(self._keys)})"

    def verify(
        self,
        method: str,
        transaction_id: str,
        branch: str,
        payload: bytes,
        signature: str | None,
        now_ms: int | None = None,
    ) -> None:
        """Checks `signature` (the metadata's or the batch entry's value;
        None or "" when there was none) against the call, at `now_ms` (now
        when None). Raises SignatureError saying why it is refused, checked
        in signature.rs's order so both SDKs answer the same."""
        if not signature:
            raise SignatureError.missing()
        if len(signature.encode()) > MAX_SIGNATURE_LEN:
            raise SignatureError.malformed("longer than any signature")
        parts = signature.split(".")
        if len(parts) != 4:
            raise SignatureError.malformed("expected v1.<key id>.<expires>.<signature>")
        version, key, expires, encoded = parts
        if version != "v1":
            raise SignatureError.malformed("unknown version (this SDK knows v1)")
        if not _EXPIRY.fullmatch(expires) or int(expires) > _U64_MAX:
            raise SignatureError.malformed("expiry is not a number")
        expires_ms = int(expires)
        raw = _base64url(encoded)
        if raw is None:
            raise SignatureError.malformed("signature is not base64url")
        public_key = self._keys.get(key)
        if public_key is None:
            raise SignatureError.unknown_key(key)
        # The expiry is checked only once the signature is known good: an
        # old genuine call says "expired", a forged one "does not match".
        try:
            if len(raw) != 64:
                raise InvalidSignature
            public_key.verify(raw, signed_bytes(method, transaction_id, branch, payload, expires_ms))
        except InvalidSignature:
            raise SignatureError.mismatch() from None
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if now > expires_ms:
            raise SignatureError.expired(now - expires_ms)

    def verify_batch(
        self,
        calls: Iterable[pb.BatchCall],
        signature: str | None,
        now_ms: int | None = None,
    ) -> None:
        """Checks `signature` (the Batch's metadata's) against the whole
        Batch of `calls` (BatchRequest.calls), as `verify` does a call."""
        self.verify(BATCH_METHOD, "", "", batch_payload_of(calls), signature, now_ms)


def _base64url(text: str) -> bytes | None:
    """`text` decoded as base64url without padding, strictly as the Rust
    side's decoder takes it (no padding, no stray characters, no length
    that cannot be, no bits set past the last byte); None otherwise."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
        return None
    return raw
