-- The change feed that WatchTransactions follows (docs/decisions.md,
-- "Watching transactions"): one row for each change of a transaction's
-- state, a saga step's status, the NEEDS_ATTENTION flag being raised, and
-- each operator action, written by triggers in the same database
-- transaction as the change itself, so the feed holds exactly what the log
-- holds. `seq` (the rowid) is the cursor: the one writing thread makes it
-- follow commit order, so a reader that has seen `seq` N has seen
-- everything before it. Pruning never deletes the newest row, so a number
-- is never handed out twice (what AUTOINCREMENT would guarantee at the
-- price of a second write per row).
CREATE TABLE txn_changes (
    seq             INTEGER PRIMARY KEY,
    txn_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    from_state      TEXT,               -- NULL: the transaction is new
    to_state        TEXT NOT NULL,
    subject         TEXT NOT NULL DEFAULT '',  -- the step or branch concerned
    detail          TEXT NOT NULL DEFAULT '',
    needs_attention INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL
);

CREATE TRIGGER txn_changes_begun AFTER INSERT ON transactions BEGIN
    INSERT INTO txn_changes (txn_id, kind, from_state, to_state, needs_attention, at_ms)
    VALUES (NEW.id, NEW.kind, NULL, NEW.state, NEW.needs_attention,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER txn_changes_state AFTER UPDATE OF state ON transactions
WHEN OLD.state IS NOT NEW.state BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, detail, needs_attention, at_ms)
    VALUES (NEW.id, NEW.kind, OLD.state, NEW.state, COALESCE(NEW.reason, ''),
            NEW.needs_attention,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- A flag raised together with a new state (a saga that ends FAILED) rides
-- on that state's row, whose needs_attention says so: one row, and no
-- question of which trigger SQLite fires first.
CREATE TRIGGER txn_changes_flagged AFTER UPDATE OF needs_attention ON transactions
WHEN NEW.needs_attention AND NOT OLD.needs_attention AND OLD.state IS NEW.state BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, detail, needs_attention, at_ms)
    VALUES (NEW.id, NEW.kind, NEW.state, NEW.state, 'needs attention', 1,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER txn_changes_step AFTER UPDATE OF state ON saga_steps
WHEN OLD.state IS NOT NEW.state BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, subject, detail, needs_attention, at_ms)
    SELECT t.id, t.kind, t.state, t.state, NEW.name, NEW.state, t.needs_attention,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM transactions t WHERE t.id = NEW.txn_id;
END;

CREATE TRIGGER txn_changes_action AFTER INSERT ON operator_actions BEGIN
    INSERT INTO txn_changes
        (txn_id, kind, from_state, to_state, subject, detail, needs_attention, at_ms)
    SELECT t.id, t.kind, t.state, t.state, NEW.branch,
           'resolved ' || NEW.outcome || ' by ' || NEW.operator || ': ' || NEW.reason,
           t.needs_attention,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM transactions t WHERE t.id = NEW.txn_id;
END;
