"""TLS on both sides, with a CA made for the test: a participant served
over TLS answers a client that dials it over TLS and refuses one in
plaintext; with a client CA (mutual TLS) it refuses a client without a
certificate that CA signed. The coordinator client and the resolver dial
an `https://` coordinator with `ClientTls`, and refuse such a URL without
it, saying so."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from concord_participant import (
    ClientTls,
    CoordinatorClient,
    ParticipantService,
    ResolverConfig,
    ServerTls,
    Serving,
    SqliteLedger,
    SyncCoordinatorClient,
    serve,
)
from concord_participant._proto.concord.v1 import participant_pb2 as pb
from concord_participant._proto.concord.v1 import participant_pb2_grpc as pb_grpc
from concord_participant._proto.concord.v1 import types_pb2 as types
from concord_participant.ledger import BranchContext
from concord_participant.resolver import Resolver
from concord_participant.tls import dial

from outcomes import AnsweringCoordinator
from scripted import Scripted, install_sqlite, read
from signing import TEST_KEY, SignedStub


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A CA for one test: its certificate, and the certificates it signs."""

    def __init__(self, name: str = "Concord test CA") -> None:
        self._key = _key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, server: bool) -> Issued:
        """A certificate for `name`: a server's for 127.0.0.1 and localhost,
        or a client's."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


@pytest.fixture(scope="module")
def server_cert(ca: Authority) -> Issued:
    return ca.issue("participant", server=True)


async def served(tmp_path: pathlib.Path, tls: ServerTls) -> tuple[Serving, str]:
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    service = ParticipantService(SqliteLedger(db), Scripted(), trusted_keys=TEST_KEY.trusted())
    serving = await serve(service, "127.0.0.1:0", resolver=None, tls=tls)
    return serving, db


async def prepared(channel: grpc.aio.Channel) -> int:
    """A signed Prepare's vote over `channel`."""
    stub = SignedStub(pb_grpc.ParticipantStub(channel), TEST_KEY)  # type: ignore[no-untyped-call]
    ref = pb.BranchRef(transaction_id=str(uuid.uuid4()), branch="b1")
    answer = await stub.Prepare(pb.PrepareRequest(branch=ref, payload=b"commit"), timeout=5)
    return int(answer.vote)


async def test_a_participant_over_tls_answers_tls_and_refuses_plaintext(
    tmp_path: pathlib.Path, ca: Authority, server_cert: Issued
) -> None:
    serving, db = await served(tmp_path, ServerTls(server_cert.cert_pem, server_cert.key_pem))
    try:
        async with dial(f"https://127.0.0.1:{serving.port}", ClientTls(ca.cert_pem)) as channel:
            assert await prepared(channel) == types.VOTE_COMMIT
        async with grpc.aio.insecure_channel(f"127.0.0.1:{serving.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await prepared(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # A client that trusts another CA does not take its certificate.
        other = ClientTls(Authority("another CA").cert_pem)
        async with dial(f"https://127.0.0.1:{serving.port}", other) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await prepared(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ValueError, match="needs TLS settings"):
            dial(f"https://127.0.0.1:{serving.port}")
    finally:
        await serving.stop()
    assert len(read(SqliteLedger(db), "SELECT op FROM effects", ())) == 1


async def test_mutual_tls_refuses_a_client_without_a_certificate_its_ca_signed(
    tmp_path: pathlib.Path, ca: Authority, server_cert: Issued
) -> None:
    clients = Authority("the clients' CA")
    tls = ServerTls(server_cert.cert_pem, server_cert.key_pem, client_ca_pem=clients.cert_pem)
    serving, _ = await served(tmp_path, tls)
    address = f"https://127.0.0.1:{serving.port}"
    try:
        mine = clients.issue("coordinator", server=False)
        with_cert = ClientTls(ca.cert_pem, mine.cert_pem, mine.key_pem)
        async with dial(address, with_cert) as channel:
            assert await prepared(channel) == types.VOTE_COMMIT
        stranger = ca.issue("stranger", server=False)  # signed, but not by the clients' CA
        for tls_of_client in (ClientTls(ca.cert_pem), ClientTls(ca.cert_pem, stranger.cert_pem, stranger.key_pem)):
            async with dial(address, tls_of_client) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await prepared(channel)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await serving.stop()
    with pytest.raises(ValueError, match="both"):
        ClientTls(ca.cert_pem, cert_chain_pem=mine.cert_pem)


@pytest.fixture
async def coordinator(ca: Authority, server_cert: Issued) -> AsyncIterator[AnsweringCoordinator]:
    """A coordinator served over TLS (it answers "aborted")."""
    answering = await AnsweringCoordinator("aborted").start(
        ServerTls(server_cert.cert_pem, server_cert.key_pem)
    )
    yield answering
    await answering.stop()


async def test_the_coordinator_client_dials_https_with_tls_and_refuses_it_without(
    ca: Authority, coordinator: AnsweringCoordinator
) -> None:
    async with CoordinatorClient(coordinator.url, timeout_s=5, tls=ClientTls(ca.cert_pem)) as client:
        assert await client.outcome("t1") == "aborted"
    async with CoordinatorClient.for_groups(
        [coordinator.url], timeout_s=5, tls=ClientTls(ca.cert_pem)
    ) as client:
        # No shard map (one group): the call goes to the address given.
        assert await client.outcome("t2") == "aborted"
    assert coordinator.asked == ["t1", "t2"]
    for make in (
        lambda: CoordinatorClient(coordinator.url),
        lambda: CoordinatorClient.for_groups([coordinator.url]),
        lambda: SyncCoordinatorClient(coordinator.url),
    ):
        with pytest.raises(ValueError, match="https:// URL: dialling it needs TLS settings"):
            make()


async def test_the_blocking_client_dials_https_with_tls(
    ca: Authority, coordinator: AnsweringCoordinator
) -> None:
    def blocking() -> str:
        tls = ClientTls(ca.cert_pem)
        with SyncCoordinatorClient(coordinator.url, timeout_s=5, tls=tls) as client:
            return client.outcome("t3")

    # In a thread, as a program without asyncio would call it (this loop
    # serves the coordinator).
    assert await asyncio.to_thread(blocking) == "aborted"


async def test_the_resolver_asks_an_https_coordinator_over_tls(
    tmp_path: pathlib.Path, ca: Authority, coordinator: AnsweringCoordinator
) -> None:
    db = str(tmp_path / "participant.db")
    install_sqlite(db)
    service = ParticipantService(SqliteLedger(db), Scripted(), trusted_keys=TEST_KEY.trusted())
    txn = str(uuid.uuid4())
    service.guarded.prepare(BranchContext(txn, "b1"), b"commit")
    config = ResolverConfig(
        coordinator=coordinator.url, tls=ClientTls(ca.cert_pem), in_doubt_after_s=0
    )
    resolver = Resolver(service.ledger, service.guarded, config)
    try:
        assert await resolver.check() == 1
    finally:
        await resolver.close()
    assert coordinator.asked == [txn]
