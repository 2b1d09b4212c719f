"""TLS for both sides of the SDK: `ServerTls`, what a participant serves
with (`serve(..., tls=...)`; a client CA makes it mutual TLS, every caller
then shows a certificate that CA signed), and `ClientTls`, what the
coordinator client, its group router and the in-doubt resolver dial an
`https://` URL with. This module owns turning PEM into grpc credentials and
a URL into a channel; it opens no port and makes no call.

The URL says how to dial: `https://` is TLS and needs a `ClientTls`;
`http://` (or a bare `host:port`) is plaintext. An `https://` URL without
TLS settings is an error, never a quiet fall back to plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

Pem = bytes | str


def _pem(pem: Pem) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def _optional(pem: Pem | None) -> bytes | None:
    return None if pem is None else _pem(pem)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


@dataclass(frozen=True)
class ServerTls:
    """A participant's TLS: its certificate chain and private key (PEM);
    with `client_ca_pem`, mutual TLS: a caller without a certificate that
    CA signed is refused during the handshake."""

    cert_chain_pem: Pem
    private_key_pem: Pem
    client_ca_pem: Pem | None = None

    @classmethod
    def from_files(
        cls, cert_chain: str, private_key: str, client_ca: str | None = None
    ) -> ServerTls:
        """The same, read from PEM files."""
        return cls(_read(cert_chain), _read(private_key), _read(client_ca) if client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(_pem(self.private_key_pem), _pem(self.cert_chain_pem))],
            root_certificates=_optional(self.client_ca_pem),
            require_client_auth=self.client_ca_pem is not None,
        )


@dataclass(frozen=True)
class ClientTls:
    """How to dial an `https://` coordinator: the CA that signed its
    certificate (PEM) and, when it asks for mutual TLS, this client's
    certificate chain and private key."""

    ca_pem: Pem
    cert_chain_pem: Pem | None = None
    private_key_pem: Pem | None = None

    def __post_init__(self) -> None:
        if (self.cert_chain_pem is None) != (self.private_key_pem is None):
            raise ValueError(
                "ClientTls: give both cert_chain_pem and private_key_pem (mutual TLS) or neither"
            )

    @classmethod
    def from_files(
        cls, ca: str, cert_chain: str | None = None, private_key: str | None = None
    ) -> ClientTls:
        """The same, read from PEM files."""
        return cls(
            _read(ca),
            _read(cert_chain) if cert_chain else None,
            _read(private_key) if private_key else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca_pem),
            private_key=_optional(self.private_key_pem),
            certificate_chain=_optional(self.cert_chain_pem),
        )


def check_url(address: str, tls: ClientTls | None) -> None:
    """Raises ValueError when `address` cannot be dialled as given: an
    `https://` URL without TLS settings."""
    if address.startswith("https://") and tls is None:
        raise _needs_tls(address)


def dial(
    address: str,
    tls: ClientTls | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to `address` (`https://host:port` over TLS with `tls`,
    `http://host:port` or `host:port` in plaintext), every call on it
    passing through `interceptors` (the client token's,
    `concord_participant.client_token`). Made on the running event loop,
    which it belongs to."""
    chain = list(interceptors) or None
    if not address.startswith("https://"):
        return grpc.aio.insecure_channel(address.removeprefix("http://"), interceptors=chain)
    if tls is None:
        raise _needs_tls(address)
    return grpc.aio.secure_channel(
        address.removeprefix("https://"), tls.credentials(), interceptors=chain
    )


def _needs_tls(address: str) -> ValueError:
    return ValueError(
        f"{address} is an https:// URL: dialling it needs TLS settings "
        "(tls=ClientTls(ca_pem, ...)); give them, or an http:// URL for plaintext"
    )
