-- Transactional messages (docs/design.md §10), as in
-- migrations/sqlite/0007_messages.sql: a message is a transactions row of
-- kind 'message' (deadline_ms: when its check-back is due) with one
-- branches row per destination, and three columns of its own: producer (the
-- check-back's endpoint), ordering_key and ordering_seq (M5).
--
-- concord_append (0004_append.sql explains its arguments and fencing,
-- 0005_append_by_key.sql its planner settings) again, restated whole as
-- CREATE OR REPLACE needs, with two changes: a transaction row may carry
-- "producer" and "ordering_key"; a decision row names the state it moves
-- the transaction from and to ("from", "state": 'active' -> 'committing'
-- for 2PC's R1, 'prepared' -> 'delivering' for a message), with an
-- optional "reason" and "seq".

ALTER TABLE transactions ADD COLUMN producer TEXT;
ALTER TABLE transactions ADD COLUMN ordering_key TEXT;
ALTER TABLE transactions ADD COLUMN ordering_seq BIGINT;

-- Recovery and takeover read the unfinished transactions only: messages
-- too.
DROP INDEX transactions_unfinished;
CREATE INDEX transactions_unfinished ON transactions (state)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating',
                    'prepared', 'delivering');
DROP INDEX transactions_unfinished_owner;
CREATE INDEX transactions_unfinished_owner ON transactions (owner)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating',
                    'prepared', 'delivering');

CREATE OR REPLACE FUNCTION concord_append(
    node             TEXT,
    fence_rows       JSONB,
    transaction_rows JSONB,
    branch_rows      JSONB,
    step_rows        JSONB,
    decided_rows     JSONB,
    aborting_rows    JSONB,
    saga_state_rows  JSONB,
    progress_rows    JSONB,
    attention_ids    JSONB,
    action_rows      JSONB,
    ended_rows       JSONB,
    branch_end_rows  JSONB
) RETURNS TEXT[] LANGUAGE plpgsql
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    owned  TEXT[];
    fenced TEXT[];
    ids    TEXT[];
    epochs JSONB;
BEGIN
    IF jsonb_array_length(fence_rows) > 0 THEN
        -- The ids, and each one's epoch keyed by id (a JSONB object's keys
        -- are found by binary search: no scan of the list per row).
        SELECT array_agg(j ->> 'id'), jsonb_object_agg(j ->> 'id', j -> 'epoch')
        INTO ids, epochs
        FROM jsonb_array_elements(fence_rows) AS j;
        -- `id = ANY (ids)` is an index condition whose rows come back in
        -- id order: no sort, and never a walk of the whole index.
        SELECT coalesce(array_agg(locked.id), '{}') INTO owned FROM (
            SELECT t.id FROM transactions AS t
            WHERE t.id = ANY (ids)
              AND t.owner = node
              AND t.epoch = (epochs ->> t.id)::bigint
            ORDER BY t.id
            FOR UPDATE OF t
        ) AS locked;
        SELECT coalesce(array_agg(j ->> 'id'), '{}') INTO fenced
        FROM jsonb_array_elements(fence_rows) AS j
        WHERE (j ->> 'id') <> ALL (owned);
        IF cardinality(fenced) > 0 THEN
            RETURN fenced;
        END IF;
    END IF;

    IF jsonb_array_length(transaction_rows) > 0 THEN
        INSERT INTO transactions
          (id, kind, state, created_at_ms, deadline_ms, idempotency_key, request_digest,
           description, producer, ordering_key, owner)
        SELECT j ->> 'id', j ->> 'kind', j ->> 'state', (j ->> 'created')::bigint,
               (j ->> 'deadline')::bigint, j ->> 'key', j ->> 'digest', j ->> 'description',
               j ->> 'producer', j ->> 'ordering_key', node
        FROM jsonb_array_elements(transaction_rows) AS j;
    END IF;

    IF jsonb_array_length(branch_rows) > 0 THEN
        INSERT INTO branches (txn_id, idx, name, participant, payload, state)
        SELECT j ->> 'txn', (j ->> 'idx')::bigint, j ->> 'name', j ->> 'participant',
               decode(j ->> 'payload', 'hex'), 'enlisted'
        FROM jsonb_array_elements(branch_rows) AS j;
    END IF;

    IF jsonb_array_length(step_rows) > 0 THEN
        INSERT INTO saga_steps
          (txn_id, idx, name, participant, kind, action, compensation, depends_on,
           attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
           retry_max_attempts, retry_jitter)
        SELECT j ->> 'txn', (j ->> 'idx')::bigint, j ->> 'name', j ->> 'participant',
               j ->> 'kind', decode(j ->> 'action', 'hex'), decode(j ->> 'compensation', 'hex'),
               j ->> 'depends_on', (j ->> 'timeout')::bigint, (j ->> 'initial')::bigint,
               (j ->> 'multiplier')::double precision, (j ->> 'max')::bigint,
               (j ->> 'attempts')::bigint, (j ->> 'jitter')::boolean
        FROM jsonb_array_elements(step_rows) AS j;
    END IF;

    -- R1/R2: a decision applies only to a transaction still active. The
    -- state test is written `(...) IS TRUE` so that no index can serve it
    -- and each row is found by its id: as a plain `t.state = 'active'` it
    -- matched the partial index of unfinished transactions, and the planner
    -- walked that whole index (every row version decisions and ends had
    -- left behind, tens of thousands under load) on every batch: 3-4 ms a
    -- statement at 30,000 rows, against 0.06 ms by primary key.
    IF jsonb_array_length(decided_rows) > 0 THEN
        UPDATE transactions AS t
        SET state = j ->> 'state', decided_at_ms = (j ->> 'at')::bigint,
            reason = coalesce(j ->> 'reason', t.reason),
            ordering_seq = (j ->> 'seq')::bigint
        FROM jsonb_array_elements(decided_rows) AS j
        WHERE t.id = j ->> 'id' AND (t.state = j ->> 'from') IS TRUE;
    END IF;

    IF jsonb_array_length(aborting_rows) > 0 THEN
        UPDATE transactions AS t
        SET state = 'aborting', decided_at_ms = (j ->> 'at')::bigint, reason = j ->> 'reason'
        FROM jsonb_array_elements(aborting_rows) AS j
        WHERE t.id = j ->> 'id' AND (t.state = 'active') IS TRUE;
    END IF;

    -- Most step records leave the saga's state and reason as they were
    -- (RUNNING, none): such rows are looked up but not rewritten.
    IF jsonb_array_length(saga_state_rows) > 0 THEN
        UPDATE transactions AS t SET state = j ->> 'state', reason = j ->> 'reason'
        FROM jsonb_array_elements(saga_state_rows) AS j
        WHERE t.id = j ->> 'id'
          AND (t.state, t.reason) IS DISTINCT FROM (j ->> 'state', j ->> 'reason');
    END IF;

    IF jsonb_array_length(progress_rows) > 0 THEN
        UPDATE saga_steps AS s
        SET state = j ->> 'state', attempts = (j ->> 'attempts')::bigint,
            compensation_attempts = (j ->> 'compensations')::bigint, last_error = j ->> 'error'
        FROM jsonb_array_elements(progress_rows) AS j
        WHERE s.txn_id = j ->> 'txn' AND s.idx = (j ->> 'idx')::bigint;
    END IF;

    IF jsonb_array_length(attention_ids) > 0 THEN
        UPDATE transactions SET needs_attention = TRUE
        WHERE id IN (SELECT jsonb_array_elements_text(attention_ids));
    END IF;

    IF jsonb_array_length(action_rows) > 0 THEN
        INSERT INTO operator_actions (txn_id, at_ms, branch, outcome, reason, operator)
        SELECT j ->> 'txn', (j ->> 'at')::bigint, j ->> 'branch', j ->> 'outcome',
               j ->> 'reason', j ->> 'operator'
        FROM jsonb_array_elements(action_rows) AS j;
    END IF;

    -- The decided_at stamp stays the decision's; an abort decided and ended
    -- in one step gets both. A saga that needed attention while retrying no
    -- longer does once it ended, unless it FAILED.
    IF jsonb_array_length(ended_rows) > 0 THEN
        UPDATE transactions AS t
        SET state = j ->> 'state', ended_at_ms = (j ->> 'at')::bigint,
            read_only = (j ->> 'read_only')::boolean, reason = j ->> 'reason',
            decided_at_ms = COALESCE(t.decided_at_ms, (j ->> 'at')::bigint),
            needs_attention = (j ->> 'state' = 'failed')
        FROM jsonb_array_elements(ended_rows) AS j
        WHERE t.id = j ->> 'id';
    END IF;

    IF jsonb_array_length(branch_end_rows) > 0 THEN
        UPDATE branches AS b
        SET state = j ->> 'state', vote = j ->> 'vote',
            attempts = (j ->> 'attempts')::bigint, last_error = j ->> 'error'
        FROM jsonb_array_elements(branch_end_rows) AS j
        WHERE b.txn_id = j ->> 'txn' AND b.idx = (j ->> 'idx')::bigint;
    END IF;

    RETURN '{}';
END
$$;
