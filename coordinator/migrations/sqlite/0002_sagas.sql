-- Sagas: one row per step, its definition and its progress. The saga itself
-- is a row of `transactions` with kind = 'saga'.

ALTER TABLE transactions ADD COLUMN needs_attention INTEGER NOT NULL DEFAULT 0;

DROP INDEX transactions_unfinished;
CREATE INDEX transactions_unfinished ON transactions (state)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating');

CREATE TABLE saga_steps (
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
);
