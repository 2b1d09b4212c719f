-- Several coordinator nodes on one database (DESIGN §6): leases, owners,
-- epochs.

-- One row per start of a node (an incarnation). A node renews its lease
-- every third of the lease period; the lease is measured on the database's
-- clock, so nodes' own clocks never need to agree.
CREATE TABLE nodes (
    -- "<name>/<uuid>": unique per start, so that a paused old process and
    -- its restarted successor are never the same owner.
    id               TEXT COLLATE "C" PRIMARY KEY,
    -- --node-name: a restart under the same name takes over at once.
    name             TEXT NOT NULL,
    -- Where clients reach the node; answered to calls it must forward.
    address          TEXT NOT NULL,
    started_at_ms    BIGINT NOT NULL,
    lease_expires_ms BIGINT NOT NULL,
    -- live | gone (lease expired, replaced, or left on shutdown)
    state            TEXT NOT NULL,
    gone_reason      TEXT
);

-- The owner (a nodes.id) drives the transaction; the epoch counts the times
-- it changed hands. Every write of an existing transaction is conditional on
-- both (fencing). '' is a transaction written before there were owners.
ALTER TABLE transactions ADD COLUMN owner TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE transactions ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;

-- Takeover looks for the unfinished transactions of gone nodes.
CREATE INDEX transactions_unfinished_owner ON transactions (owner)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating');
