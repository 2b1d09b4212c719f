-- Concord's durable log on SQLite. One row per transaction, one per branch.
-- Timestamps are milliseconds since the Unix epoch.

CREATE TABLE transactions (
    id              TEXT PRIMARY KEY NOT NULL,  -- UUIDv7, time-ordered
    kind            TEXT NOT NULL DEFAULT 'two_phase',
    -- active | committing | aborting | committed | aborted
    state           TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    deadline_ms     INTEGER NOT NULL,
    decided_at_ms   INTEGER,
    ended_at_ms     INTEGER,
    reason          TEXT,
    idempotency_key TEXT UNIQUE,
    description     TEXT,
    read_only       INTEGER NOT NULL DEFAULT 0
);

-- Recovery reads the unfinished transactions only.
CREATE INDEX transactions_unfinished ON transactions (state)
    WHERE state IN ('active', 'committing', 'aborting');

CREATE TABLE branches (
    txn_id      TEXT NOT NULL REFERENCES transactions (id),
    idx         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    participant TEXT NOT NULL,
    payload     BLOB NOT NULL,
    -- enlisted | ... | committed | aborted | read_only (see BranchState)
    state       TEXT NOT NULL,
    vote        TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    PRIMARY KEY (txn_id, idx)
);
