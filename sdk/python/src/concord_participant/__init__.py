"""Concord's participant SDK for Python: take part in Concord transactions
with the same guarantees as the Rust SDK (docs/design.md §4).

- `ledger`: the exactly-once ledger in your database (`SqliteLedger`, or
  `PostgresLedger` with psycopg 3), written in the same local transaction
  as your change; the handler protocols
  (`TwoPhaseParticipant`, `SagaStep`) and their answers (`Vote`,
  `StepResult`, `ParticipantError`).
- `guarded`: the ledger-guarded path each call takes.
- `server`: `ParticipantService`, the `concord.v1.Participant` gRPC service
  (grpc.aio, with `Batch`), and `serve`, which runs it with the resolver.
  It obeys only calls its coordinator signed (`trusted_keys`), or anyone
  when told so by name (`accept_unsigned=True`), and decodes calls of up
  to `max_call_bytes` (4 MiB unless told).
- `refusals`: the warnings of refused signatures, at most one per reason
  every 10 s, with a count.
- `signature`: checking a call's signature against the coordinator keys
  trusted (`TrustedKeys`, `SignatureError`), pinned with the Rust crate's
  format by `sdk/signature-cases.json`.
- `tls`: TLS settings, the server's (`ServerTls`, mutual with a client CA)
  and the client's for `https://` coordinators (`ClientTls`).
- `resolver`: asks the configured coordinator about branches left in doubt
  (after a restart, or a long wait) and applies the answer once.
- `saga`: build a saga's step graph (`Saga`, `Step`) and submit it.
- `message`, `outbox`: transactional messages (`Message`, `Destination`,
  `PreparedMessage`): prepared at the coordinator, published in your local
  transaction (the outbox row), submitted; `MessageDestination` receives
  them, once each.
- `crash`: crash points for tests (`CONCORD_PARTICIPANT_CRASH`).
- `client`: `CoordinatorClient`, the coordinator's client (grpc.aio), and
  `SyncCoordinatorClient` for code without an event loop;
  `CoordinatorClient.for_groups` routes each call by the shard map
  (`groups`, `shard`: the map's rules, pinned with the Rust crate's by
  `sdk/shard-cases.json`).
- `client_token`: the client token (`token=...`) a coordinator started
  with `--client-token` requires, sent with every call the client makes.

The gRPC stubs are generated from the repository's proto files when the
package is built (`pip install ./sdk/python`).
"""

from .client import (
    Begun,
    Branch,
    CoordinatorClient,
    CoordinatorError,
    PreparedAnswer,
    Retry,
    SyncCoordinatorClient,
)
from .ledger import (
    BranchContext,
    FailedPrecondition,
    InvalidPayload,
    Ledger,
    MessageDestination,
    ParticipantError,
    PostgresLedger,
    SagaStep,
    SqliteLedger,
    StepResult,
    TwoPhaseParticipant,
    Unavailable,
    Unsupported,
    Vote,
)
from .message import Destination, Message, PreparedMessage
from .outbox import AlreadyPublished, MessageDropped
from .resolver import ResolverConfig
from .saga import Saga, SagaStatus, Step
from .server import NoCoordinatorKey, ParticipantService, Serving, serve
from .signature import KeyFileError, SignatureError, TrustedKeys
from .tls import ClientTls, ServerTls

__all__ = [
    "AlreadyPublished",
    "Begun",
    "Branch",
    "BranchContext",
    "ClientTls",
    "CoordinatorClient",
    "CoordinatorError",
    "Destination",
    "FailedPrecondition",
    "InvalidPayload",
    "KeyFileError",
    "Ledger",
    "Message",
    "MessageDestination",
    "MessageDropped",
    "NoCoordinatorKey",
    "ParticipantError",
    "PostgresLedger",
    "PreparedAnswer",
    "PreparedMessage",
    "ParticipantService",
    "ResolverConfig",
    "Retry",
    "Saga",
    "SagaStatus",
    "SagaStep",
    "ServerTls",
    "Serving",
    "SignatureError",
    "SqliteLedger",
    "Step",
    "StepResult",
    "SyncCoordinatorClient",
    "TrustedKeys",
    "TwoPhaseParticipant",
    "Unavailable",
    "Unsupported",
    "Vote",
    "serve",
]
