-- Operators' decisions for branches or steps that cannot answer
-- (`concord txn resolve`): who, when, why. Never deleted.
CREATE TABLE operator_actions (
    txn_id   TEXT COLLATE "C" NOT NULL REFERENCES transactions (id),
    at_ms    BIGINT NOT NULL,
    branch   TEXT NOT NULL,
    outcome  TEXT NOT NULL,  -- committed | aborted | compensated
    reason   TEXT NOT NULL,
    operator TEXT NOT NULL
);

CREATE INDEX operator_actions_txn ON operator_actions (txn_id, at_ms);
