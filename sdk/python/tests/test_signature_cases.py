"""The signature format shared with the Rust crate concord-proto
(sdk/signature-cases.json, written by proto/src/signature/tests.rs): each
case's signature checked against the file's public key at the case's time
ends as the Rust side's does ("ok", or the kind of its refusal), a whole
Batch's as a single call's. Then the key files: several keys (rotation),
and the ones refused by name."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import pytest

from concord_participant import KeyFileError, SignatureError, TrustedKeys
from concord_participant._proto.concord.v1 import participant_pb2 as pb
from concord_participant.signature import (
    BATCH_METHOD,
    SignedCall,
    batch_entry,
    batch_payload,
    batch_payload_of,
)

from signing import CoordinatorKey, now_ms, signed_entry

CASES = json.loads(
    (pathlib.Path(__file__).resolve().parents[2] / "signature-cases.json").read_text()
)


def outcome(keys: TrustedKeys, case: dict[str, Any]) -> str:
    try:
        keys.verify(
            case["method"],
            case["transaction_id"],
            case["branch"],
            bytes.fromhex(case["payload_hex"]),
            case["signature"],
            now_ms=case["now_ms"],
        )
    except SignatureError as error:
        return error.kind
    return "ok"


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_each_case_ends_as_in_the_rust_crate(case: dict[str, Any]) -> None:
    assert outcome(TrustedKeys.from_pem(CASES["public_key_pem"]), case) == case["expect"]


def batch_outcome(keys: TrustedKeys, case: dict[str, Any]) -> str:
    entries = [
        SignedCall(e["method"], e["transaction_id"], e["branch"], bytes.fromhex(e["payload_hex"]))
        for e in case["entries"]
    ]
    try:
        keys.verify(
            BATCH_METHOD, "", "", batch_payload(entries), case["signature"], now_ms=case["now_ms"]
        )
    except SignatureError as error:
        return error.kind
    return "ok"


@pytest.mark.parametrize(
    "case", CASES["batch_cases"], ids=[c["name"] for c in CASES["batch_cases"]]
)
def test_each_batch_case_ends_as_in_the_rust_crate(case: dict[str, Any]) -> None:
    assert batch_outcome(TrustedKeys.from_pem(CASES["public_key_pem"]), case) == case["expect"]


def test_the_batch_cases_hold_a_batch_as_signed_and_ones_changed_since() -> None:
    assert BATCH_METHOD == "Batch"
    assert {"ok", "mismatch"} <= {case["expect"] for case in CASES["batch_cases"]}


def test_a_batch_request_is_signed_over_its_entries_as_the_cases_frame_them() -> None:
    """`verify_batch` reads a BatchRequest's calls as the cases list them:
    the first case's entries, sent as a Prepare and a Commit, verify."""
    keys = TrustedKeys.from_pem(CASES["public_key_pem"])
    case = CASES["batch_cases"][0]
    assert case["expect"] == "ok"
    calls = []
    for entry in case["entries"]:
        ref = pb.BranchRef(transaction_id=entry["transaction_id"], branch=entry["branch"])
        payload = bytes.fromhex(entry["payload_hex"])
        if entry["method"] == "Prepare":
            calls.append(pb.BatchCall(prepare=pb.PrepareRequest(branch=ref, payload=payload)))
        else:
            assert entry["method"] == "Commit"
            calls.append(pb.BatchCall(commit=pb.CommitBranchRequest(branch=ref, payload=payload)))
    keys.verify_batch(calls, case["signature"], now_ms=case["now_ms"])
    with pytest.raises(SignatureError) as refused:
        keys.verify_batch(calls[::-1], case["signature"], now_ms=case["now_ms"])
    assert refused.value.kind == "mismatch"
    with pytest.raises(SignatureError) as refused:
        keys.verify_batch(calls, None)
    assert refused.value.kind == "missing"


def test_every_kind_of_batch_entry_is_framed_as_the_coordinator_signs_it() -> None:
    ref = pb.BranchRef(transaction_id="t1", branch="b1")
    calls = [
        pb.BatchCall(prepare=pb.PrepareRequest(branch=ref, payload=b"p")),
        pb.BatchCall(commit=pb.CommitBranchRequest(branch=ref, payload=b"c")),
        pb.BatchCall(abort=pb.AbortBranchRequest(branch=ref, payload=b"a")),
        pb.BatchCall(commit_one_phase=pb.CommitOnePhaseRequest(branch=ref, payload=b"o")),
        pb.BatchCall(execute=pb.ExecuteRequest(branch=ref, payload=b"e")),
        pb.BatchCall(compensate=pb.CompensateRequest(branch=ref, payload=b"x")),
        pb.BatchCall(deliver=pb.DeliverRequest(branch=ref, payload=b"d")),
        pb.BatchCall(prepare=pb.PrepareRequest(payload=b"no branch")),
        pb.BatchCall(),  # no call
    ]
    assert [batch_entry(call) for call in calls] == [
        SignedCall("Prepare", "t1", "b1", b"p"),
        SignedCall("Commit", "t1", "b1", b"c"),
        SignedCall("Abort", "t1", "b1", b"a"),
        SignedCall("CommitOnePhase", "t1", "b1", b"o"),
        SignedCall("Execute", "t1", "b1", b"e"),
        SignedCall("Compensate", "t1", "b1", b"x"),
        SignedCall("Deliver", "t1", "b1", b"d"),
        SignedCall("Prepare", "", "", b"no branch"),
        SignedCall("", "", "", b""),
    ]
    assert [batch_entry(call) for call in calls] == [signed_entry(call) for call in calls]
    # Each entry framed as a single call's signed bytes, without the domain
    # and the expiry: u32be len | method, transaction, branch, sha256.
    assert batch_payload_of(calls[:1]) == (
        b"\0\0\0\x07Prepare" + b"\0\0\0\x02t1" + b"\0\0\0\x02b1" + hashlib.sha256(b"p").digest()
    )
    assert batch_payload_of(calls[-1:]) == b"\0" * 12 + hashlib.sha256(b"").digest()
    assert batch_payload_of([]) == b""
    assert batch_payload_of(calls) == b"".join(batch_payload_of([call]) for call in calls)


def test_the_refusals_say_what_the_rust_crates_say() -> None:
    keys = TrustedKeys.from_pem(CASES["public_key_pem"])
    first = CASES["cases"][0]
    assert first["expect"] == "ok"
    call = (first["method"], first["transaction_id"], first["branch"], b"another")
    with pytest.raises(SignatureError) as refused:
        keys.verify(*call, first["signature"], now_ms=first["now_ms"])
    assert str(refused.value) == (
        "the call's signature does not match it (signed for another method, transaction, "
        "branch or payload)"
    )
    with pytest.raises(SignatureError) as refused:
        keys.verify(*call, None)
    assert refused.value.kind == "missing"
    assert str(refused.value) == (
        "the call is not signed: this participant obeys only a coordinator whose key it "
        "trusts (concord serve --signing-key)"
    )
    expires = int(first["signature"].split(".")[2])
    with pytest.raises(SignatureError) as refused:
        keys.verify(*call[:3], bytes.fromhex(first["payload_hex"]), first["signature"], expires + 5)
    assert str(refused.value) == (
        "the call's signature expired 5 ms ago (a replayed call, or clocks more than 60 s apart)"
    )


def test_a_file_of_two_keys_trusts_either_and_no_other() -> None:
    current, next_key, stranger = CoordinatorKey(), CoordinatorKey(), CoordinatorKey()
    both = TrustedKeys.from_pem(current.public_pem + next_key.public_pem)
    assert both.ids == [current.id, next_key.id]
    for key in (current, next_key):
        both.verify("Commit", "t1", "b1", b"x", key.sign("Commit", "t1", "b1", b"x"))
    with pytest.raises(SignatureError) as refused:
        both.verify("Commit", "t1", "b1", b"x", stranger.sign("Commit", "t1", "b1", b"x"))
    assert refused.value.kind == "unknown_key"
    assert stranger.id in str(refused.value)
    # Good until its expiry, to the millisecond.
    expires = now_ms() + 1000
    signed = current.sign("Commit", "t1", "b1", b"x", expires)
    both.verify("Commit", "t1", "b1", b"x", signed, now_ms=expires)
    with pytest.raises(SignatureError, match="expired 1 ms ago"):
        both.verify("Commit", "t1", "b1", b"x", signed, now_ms=expires + 1)


PRIVATE = """-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHplj3jEQcQT7fPzlrgBfhjmtzk9CaFNG8miIeLSBhmV
-----END PRIVATE KEY-----
"""
#: An EC P-256 public key, not Ed25519.
NOT_ED25519 = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEylO/Scw3khKHXA6AHsdsJINYCDoe
ST46hhHzRhmuDGzf8VjofUIRtvamotM2bAixUp4QiXQbvTaAMLvnxOZFbA==
-----END PUBLIC KEY-----
"""


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (PRIVATE, "expected a PUBLIC KEY PEM block, found PRIVATE KEY"),
        ("", "no PUBLIC KEY block found"),
        ("not a key", "no PUBLIC KEY block found"),
        (NOT_ED25519, "not an Ed25519 key"),
        ("-----BEGIN PUBLIC KEY-----\n*** \n-----END PUBLIC KEY-----\n", "not PEM"),
    ],
    ids=["a private key", "empty", "not PEM", "not Ed25519", "not base64"],
)
def test_key_files_of_the_wrong_kind_are_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(KeyFileError, match=says):
        TrustedKeys.from_pem(text)


def test_a_key_file_is_named_in_its_refusal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "coordinator.pub"
    path.write_text(PRIVATE)
    with pytest.raises(KeyFileError, match=f"{path}: expected a PUBLIC KEY"):
        TrustedKeys.from_file(path)
    path.write_text(CASES["public_key_pem"])
    assert len(TrustedKeys.from_file(str(path)).ids) == 1
