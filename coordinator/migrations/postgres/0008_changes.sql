-- The change feed that WatchTransactions follows (docs/decisions.md,
-- "Watching transactions"), as in migrations/sqlite/0006_changes.sql: one
-- row for each change of a transaction's state, a saga step's status, the
-- NEEDS_ATTENTION flag being raised, and each operator action, written by
-- triggers in the same database transaction as the change.
--
-- The cursor is (xid, seq). A sequence alone does not follow commit order
-- when several nodes write at once (seq 10 can commit before seq 9), so a
-- reader reads only rows whose writing transaction is older than every
-- transaction still running (`pg_snapshot_xmin`): those rows are final,
-- and every row written later has a larger xid, so a reader that resumes
-- after its last (xid, seq) misses nothing.
CREATE TABLE txn_changes (
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq             BIGSERIAL,
    txn_id          TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,
    from_state      TEXT,               -- NULL: the transaction is new
    to_state        TEXT NOT NULL,
    subject         TEXT NOT NULL DEFAULT '',  -- the step or branch concerned
    detail          TEXT NOT NULL DEFAULT '',
    needs_attention BOOLEAN NOT NULL,
    at_ms           BIGINT NOT NULL,
    PRIMARY KEY (xid, seq)
);

CREATE FUNCTION concord_now_ms() RETURNS BIGINT LANGUAGE sql AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Statement triggers with transition tables: one INSERT per statement of
-- concord_append, however many rows it touched.
CREATE FUNCTION concord_changes_begun() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO txn_changes (txn_id, kind, from_state, to_state, needs_attention, at_ms)
    SELECT n.id, n.kind, NULL, n.state, n.needs_attention, concord_now_ms()
    FROM new_rows n ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE TRIGGER txn_changes_begun AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION concord_changes_begun();

CREATE FUNCTION concord_changes_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, detail, needs_attention, at_ms)
    SELECT n.id, n.kind, o.state, n.state,
           CASE WHEN o.state <> n.state THEN coalesce(n.reason, '')
                ELSE 'needs attention' END,
           n.needs_attention, concord_now_ms()
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.state <> n.state OR (n.needs_attention AND NOT o.needs_attention)
    ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE TRIGGER txn_changes_updated AFTER UPDATE ON transactions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION concord_changes_updated();

CREATE FUNCTION concord_changes_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, subject, detail, needs_attention, at_ms)
    SELECT t.id, t.kind, t.state, t.state, n.name, n.state, t.needs_attention,
           concord_now_ms()
    FROM new_rows n
    JOIN old_rows o ON o.txn_id = n.txn_id AND o.idx = n.idx
    JOIN transactions t ON t.id = n.txn_id
    WHERE o.state <> n.state
    ORDER BY n.txn_id, n.idx;
    RETURN NULL;
END $$;

CREATE TRIGGER txn_changes_step AFTER UPDATE ON saga_steps
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION concord_changes_step();

CREATE FUNCTION concord_changes_action() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, subject, detail, needs_attention, at_ms)
    SELECT t.id, t.kind, t.state, t.state, n.branch,
           'resolved ' || n.outcome || ' by ' || n.operator || ': ' || n.reason,
           t.needs_attention, concord_now_ms()
    FROM new_rows n JOIN transactions t ON t.id = n.txn_id
    ORDER BY n.seq;
    RETURN NULL;
END $$;

CREATE TRIGGER txn_changes_action AFTER INSERT ON operator_actions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION concord_changes_action();
