"""The client token (docs/security.md, design §12 S3): a coordinator started
with `--client-token` answers every call on its Coordinator service but
GetOutcome UNAUTHENTICATED unless it carries `authorization: Bearer
<token>`, as the Rust SDK's `CoordinatorClient::with_token` sends it.

This module owns checking a token once, when the client is made, and
putting it on every call: `BearerToken` gives the interceptors the
client's channels are dialled with (`tls.dial`), so that a call routed to
any group, a retry, the router's shard-map reads and any stream carry it
without a call site saying so. It makes no call of its own; the in-doubt resolver
asks only GetOutcome and dials without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

#: The metadata key the coordinator reads a client token from.
AUTHORIZATION = "authorization"

Request = TypeVar("Request")
Response = TypeVar("Response")


def bearer(token: str) -> str:
    """`Bearer <token>`, the header's value; ValueError when `token` could
    not travel as it is: an HTTP/2 header carries printable ASCII, and one
    with whitespace at its ends would arrive trimmed and never match."""
    if not isinstance(token, str) or not token:
        raise ValueError("a client token is a non-empty str")
    if token != token.strip() or not all(" " <= c <= "~" for c in token):
        # The token itself is a secret: the message does not repeat it.
        raise ValueError(
            "a client token is printable ASCII, without whitespace at its ends "
            "(as given to the coordinator's --client-token)"
        )
    return f"Bearer {token}"


class BearerToken:
    """A client token, checked: what the client's channels are dialled
    with (`interceptors`) so that every call on them carries it."""

    def __init__(self, token: str) -> None:
        self._value = bearer(token)

    def __repr__(self) -> str:
        # Never the token: a client's repr ends up in logs.
        return "BearerToken(...)"

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """One interceptor for each kind of call: a grpc.aio channel files
        each interceptor under the first kind it implements only, so one
        object implementing all four would leave streams without the
        token."""
        return [
            _UnaryUnary(self._value),
            _UnaryStream(self._value),
            _StreamUnary(self._value),
            _StreamStream(self._value),
        ]


class _Carrier:
    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(...)"

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata.from_tuple(tuple(details.metadata or ()))
        # The client's token replaces any the call was given, as the Rust
        # SDK's does: one token a call.
        metadata[AUTHORIZATION] = self._value
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnary(_Carrier, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Request],
            Awaitable[grpc.aio.UnaryUnaryCall[Request, Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Request,
    ) -> Response | grpc.aio.UnaryUnaryCall[Request, Response]:
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStream(_Carrier, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Request],
            Awaitable[grpc.aio.UnaryStreamCall[Request, Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Request,
    ) -> AsyncIterator[Response] | grpc.aio.UnaryStreamCall[Request, Response]:
        return await continuation(self._with_token(client_call_details), request)


class _StreamUnary(_Carrier, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[Request] | Iterable[Request]],
            Awaitable[grpc.aio.StreamUnaryCall[Request, Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Request] | Iterable[Request],
    ) -> Response | grpc.aio.StreamUnaryCall[Request, Response]:
        return await continuation(self._with_token(client_call_details), request_iterator)


class _StreamStream(_Carrier, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[Request] | Iterable[Request]],
            Awaitable[grpc.aio.StreamStreamCall[Request, Response]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Request] | Iterable[Request],
    ) -> AsyncIterator[Response] | grpc.aio.StreamStreamCall[Request, Response]:
        return await continuation(self._with_token(client_call_details), request_iterator)
