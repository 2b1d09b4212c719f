-- Transactional messages (docs/design.md §10). A message is a transactions
-- row of kind 'message' (state prepared | delivering | delivered |
-- dropped; deadline_ms is when its check-back is due) and one branches row
-- per destination (state enlisted | delivering | delivered | aborted).
--   producer      the Participant endpoint its check-back goes to
--   ordering_key  M5: messages with one key reach each destination in
--                 the order they were decided ...
--   ordering_seq  ... which is this number's, among the key's unfinished
--                 messages (set by the decision record).
ALTER TABLE transactions ADD COLUMN producer TEXT;
ALTER TABLE transactions ADD COLUMN ordering_key TEXT;
ALTER TABLE transactions ADD COLUMN ordering_seq INTEGER;

-- Recovery reads the unfinished transactions only: messages too.
DROP INDEX transactions_unfinished;
CREATE INDEX transactions_unfinished ON transactions (state)
    WHERE state IN ('active', 'committing', 'aborting', 'running', 'compensating',
                    'prepared', 'delivering');
