-- A deployment of several groups (docs/design.md §11): this database's
-- group, its copy of the shard map, and what moved shards handed over.
-- Empty in a deployment of one group. A SQLite log has one node, which
-- fences itself by this copy (runtime/groups.rs); the PostgreSQL log,
-- shared by a group's nodes, fences in the database (its 0010_shards.sql).

-- Which group this database is the log of: set by the first map a node of
-- the group writes, and never changed (a node of another group is refused).
-- The other columns are those the PostgreSQL fence reads, kept here too so
-- both logs hold the same tables (store/shards.rs writes both alike).
CREATE TABLE shard_group (
    one            INTEGER PRIMARY KEY DEFAULT 1 CHECK (one = 1),
    name           TEXT NOT NULL,
    shards         INTEGER NOT NULL,
    founded_ms     INTEGER NOT NULL,
    founding_group TEXT NOT NULL,
    margin_ms      INTEGER NOT NULL
);

-- Every version of the map written here; the highest wins.
CREATE TABLE shard_maps (
    version    INTEGER PRIMARY KEY,
    body       TEXT NOT NULL
);

-- The highest version's owners, one row per (shard, switch), rewritten
-- with each new version.
CREATE TABLE shard_owners (
    shard      INTEGER NOT NULL,
    from_ms    INTEGER NOT NULL,
    group_name TEXT NOT NULL,
    PRIMARY KEY (shard, from_ms)
);

-- Idempotency keys of a shard that moved here, copied from the group that
-- owned it before (§11 step 3): a Begin retried across the move finds its
-- first transaction, which stays that group's.
CREATE TABLE handed_over_keys (
    idempotency_key TEXT PRIMARY KEY,
    txn_id          TEXT NOT NULL,
    request_digest  TEXT
);

-- The switches whose keys are all here: until its row exists, keyed
-- requests of a shard that moved here are answered UNAVAILABLE.
CREATE TABLE shard_handovers (
    shard      INTEGER NOT NULL,
    from_ms    INTEGER NOT NULL,
    PRIMARY KEY (shard, from_ms)
);
