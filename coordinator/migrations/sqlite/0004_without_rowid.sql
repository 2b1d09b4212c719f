-- no-transaction
-- The log's three keyed tables rebuilt as WITHOUT ROWID tables, and the
-- idempotency-key index holding only the rows that have a key. A table with
-- a TEXT primary key kept a rowid B-tree and a separate index of its key, and
-- the UNIQUE key column indexed every keyless row too: each new transaction
-- wrote four B-trees where two now do, and a batch dirties fewer pages
-- before its fsync (docs/performance.md).
--
-- SQLite's way to change a table (https://sqlite.org/lang_altertable.html,
-- "other kinds of table schema changes"): foreign keys off, then in one
-- transaction create the new table, copy, drop the old, rename. Run outside
-- sqlx's transaction, since the foreign_keys pragma does nothing inside one.
-- If the process dies after COMMIT and before sqlx notes this migration, the
-- next start runs it again on the new tables, which rebuilds them the same.

PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

CREATE TABLE transactions_rebuilt (
    id              TEXT PRIMARY KEY NOT NULL,  -- UUIDv7, time-ordered
    kind            TEXT NOT NULL DEFAULT 'two_phase',
    -- active | committing | aborting | committed | aborted
    -- | running | compensating | completed | compensated | failed
    state           TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    deadline_ms     INTEGER NOT NULL,
    decided_at_ms   INTEGER,
    ended_at_ms     INTEGER,
    reason          TEXT,
    idempotency_key TEXT,
    description     TEXT,
    read_only       INTEGER NOT NULL DEFAULT 0,
    needs_attention INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO transactions_rebuilt
    (id, kind, state, created_at_ms, deadline_ms, decided_at_ms, ended_at_ms, reason,
     idempotency_key, description, read_only, needs_attention)
SELECT id, kind, state, created_at_ms, deadline_ms, decided_at_ms, ended_at_ms, reason,
       idempotency_key, description, read_only, needs_attention
FROM transactions;
DROP TABLE transactions;
ALTER TABLE transactions_rebuilt RENAME TO transactions;

CREATE UNIQUE INDEX transactions_idempotency_key ON transactions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Recovery reads the unfinished transactions only.
CREATE INDEX transactions_unfinished ON transactions (state)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating');

CREATE TABLE branches_rebuilt (
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
) WITHOUT ROWID;
INSERT INTO branches_rebuilt
    (txn_id, idx, name, participant, payload, state, vote, attempts, last_error)
SELECT txn_id, idx, name, participant, payload, state, vote, attempts, last_error
FROM branches;
DROP TABLE branches;
ALTER TABLE branches_rebuilt RENAME TO branches;

CREATE TABLE saga_steps_rebuilt (
    txn_id                TEXT NOT NULL REFERENCES transactions (id),
    idx                   INTEGER NOT NULL,
    name                  TEXT NOT NULL,
    participant           TEXT NOT NULL,
    kind                  TEXT NOT NULL,  -- compensatable | pivot | retriable
    action                BLOB NOT NULL,
    compensation          BLOB,
    depends_on            TEXT NOT NULL,  -- step indices, comma-separated
    attempt_timeout_ms    INTEGER NOT NULL,
    retry_initial_ms      INTEGER NOT NULL,
    retry_multiplier      REAL NOT NULL,
    retry_max_ms          INTEGER NOT NULL,
    retry_max_attempts    INTEGER NOT NULL,
    retry_jitter          INTEGER NOT NULL,
    -- pending | succeeded | failed | unknown | compensated (| skipped at the end)
    state                 TEXT NOT NULL DEFAULT 'pending',
    attempts              INTEGER NOT NULL DEFAULT 0,
    compensation_attempts INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT,
    PRIMARY KEY (txn_id, idx)
) WITHOUT ROWID;
INSERT INTO saga_steps_rebuilt
    (txn_id, idx, name, participant, kind, action, compensation, depends_on,
     attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
     retry_max_attempts, retry_jitter, state, attempts, compensation_attempts, last_error)
SELECT txn_id, idx, name, participant, kind, action, compensation, depends_on,
       attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
       retry_max_attempts, retry_jitter, state, attempts, compensation_attempts, last_error
FROM saga_steps;
DROP TABLE saga_steps;
ALTER TABLE saga_steps_rebuilt RENAME TO saga_steps;

COMMIT;

PRAGMA foreign_keys = ON;
