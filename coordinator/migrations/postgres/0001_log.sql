-- Concord's durable log on PostgreSQL: the same tables and column names as
-- the SQLite log (migrations/sqlite), with PostgreSQL's types. Integers are
-- BIGINT so that one set of row types reads both. Timestamps are
-- milliseconds since the Unix epoch.

CREATE TABLE transactions (
    -- UUIDv7, time-ordered. Ids compare byte by byte (COLLATE "C"), as in
    -- SQLite and in the coordinator: paging and recovery rely on that order.
    id              TEXT COLLATE "C" PRIMARY KEY,
    kind            TEXT NOT NULL DEFAULT 'two_phase',
    -- active | committing | aborting | committed | aborted
    -- | running | compensating | completed | compensated | failed
    state           TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    deadline_ms     BIGINT NOT NULL,
    decided_at_ms   BIGINT,
    ended_at_ms     BIGINT,
    reason          TEXT,
    idempotency_key TEXT UNIQUE,
    description     TEXT,
    read_only       BOOLEAN NOT NULL DEFAULT FALSE,
    needs_attention BOOLEAN NOT NULL DEFAULT FALSE
);

-- Recovery reads the unfinished transactions only.
CREATE INDEX transactions_unfinished ON transactions (state)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating');

CREATE TABLE branches (
    txn_id      TEXT COLLATE "C" NOT NULL REFERENCES transactions (id),
    idx         BIGINT NOT NULL,
    name        TEXT NOT NULL,
    participant TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    state       TEXT NOT NULL,
    vote        TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT,
    PRIMARY KEY (txn_id, idx)
);

CREATE TABLE saga_steps (
    txn_id                TEXT COLLATE "C" NOT NULL REFERENCES transactions (id),
    idx                   BIGINT NOT NULL,
    name                  TEXT NOT NULL,
    participant           TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    action                BYTEA NOT NULL,
    compensation          BYTEA,
    depends_on            TEXT NOT NULL,
    attempt_timeout_ms    BIGINT NOT NULL,
    retry_initial_ms      BIGINT NOT NULL,
    retry_multiplier      DOUBLE PRECISION NOT NULL,
    retry_max_ms          BIGINT NOT NULL,
    retry_max_attempts    BIGINT NOT NULL,
    retry_jitter          BOOLEAN NOT NULL,
    state                 TEXT NOT NULL DEFAULT 'pending',
    attempts              BIGINT NOT NULL DEFAULT 0,
    compensation_attempts BIGINT NOT NULL DEFAULT 0,
    last_error            TEXT,
    PRIMARY KEY (txn_id, idx)
);
