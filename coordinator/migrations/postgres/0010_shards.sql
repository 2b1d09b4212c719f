-- A deployment of several groups (docs/design.md §11): this database's
-- group, its copy of the shard map, what moved shards handed over, and the
-- fence that keeps this group's nodes from logging another group's
-- transactions however stale their copy of the map or skewed their clock.
-- Empty, and the fence not installed, in a deployment of one group.

-- Which group this database is the log of: set by the first map a node of
-- the group writes, and never changed (a node of another group is refused).
-- `margin_ms`: how long before a shard's switch time this database stops
-- taking new idempotency keys of the shard (§11 step 2).
CREATE TABLE shard_group (
    one            BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    name           TEXT NOT NULL,
    shards         BIGINT NOT NULL,
    founded_ms     BIGINT NOT NULL,
    founding_group TEXT NOT NULL,
    margin_ms      BIGINT NOT NULL
);

-- Every version of the map written here; the highest wins.
CREATE TABLE shard_maps (
    version BIGINT PRIMARY KEY,
    body    TEXT NOT NULL
);

-- The highest version's owners, one row per (shard, switch): what the fence
-- reads. Rewritten with each new version, in the same transaction.
CREATE TABLE shard_owners (
    shard      BIGINT NOT NULL,
    from_ms    BIGINT NOT NULL,
    group_name TEXT NOT NULL,
    PRIMARY KEY (shard, from_ms)
);

-- Idempotency keys of a shard that moved here, copied from the group that
-- owned it before (§11 step 3): a Begin retried across the move finds its
-- first transaction, which stays that group's.
CREATE TABLE handed_over_keys (
    idempotency_key TEXT PRIMARY KEY,
    txn_id          TEXT COLLATE "C" NOT NULL,
    request_digest  TEXT
);

-- The switches whose keys are all here: until its row exists, keyed
-- requests of a shard that moved here are answered UNAVAILABLE.
CREATE TABLE shard_handovers (
    shard   BIGINT NOT NULL,
    from_ms BIGINT NOT NULL,
    PRIMARY KEY (shard, from_ms)
);

-- §11 step 2, fencing by the database. A new transaction row is refused
-- (check_violation, so the log writer fails that request alone) when
-- - its id's shard, at the millisecond in its id, belongs to another group:
--   after a switch time the old owner logs nothing new in the shard, and
--   the new owner nothing from before it; or
-- - it has an idempotency key, its shard is moving to another group, and
--   this database's clock has passed the switch time less the margin: the
--   keys are about to be copied to the new owner, and a key logged after
--   the copy would let a retried Begin make a second transaction there.
-- Ids minted before the map was founded are the founding group's.
CREATE FUNCTION concord_shard_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mine   shard_group%ROWTYPE;
    id_ms    BIGINT;
    id_shard INTEGER;
    id_owner TEXT;
    latest shard_owners%ROWTYPE;
BEGIN
    SELECT * INTO mine FROM shard_group;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    id_ms := ('x' || substr(NEW.id, 1, 8) || substr(NEW.id, 10, 4))::bit(48)::bigint;
    IF id_ms < mine.founded_ms THEN
        id_owner := mine.founding_group;
    ELSE
        id_shard := ('x' || substr(NEW.id, 16, 3))::bit(12)::integer % mine.shards;
        SELECT o.group_name INTO id_owner FROM shard_owners AS o
        WHERE o.shard = id_shard AND o.from_ms <= id_ms
        ORDER BY o.from_ms DESC LIMIT 1;
    END IF;
    IF id_owner IS DISTINCT FROM mine.name THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('transaction %s belongs to group %s (shard %s), not to this '
                             'database''s group %s', NEW.id, coalesce(id_owner, '?'),
                             coalesce(id_shard::text, 'none'), mine.name);
    END IF;
    IF NEW.idempotency_key IS NOT NULL AND id_shard IS NOT NULL THEN
        SELECT * INTO latest FROM shard_owners AS o
        WHERE o.shard = id_shard ORDER BY o.from_ms DESC LIMIT 1;
        IF latest.group_name <> mine.name
           AND (extract(epoch FROM clock_timestamp()) * 1000)::bigint
               >= latest.from_ms - mine.margin_ms THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
                MESSAGE = format('shard %s moves to group %s at %s: its new idempotency '
                                 'keys go there', id_shard, latest.group_name, latest.from_ms);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

-- The trigger that calls it is created with the `shard_group` row, when a
-- node of a sharded group first writes a map here (store/shards.rs): a
-- deployment of one group pays nothing for it on every new transaction.
