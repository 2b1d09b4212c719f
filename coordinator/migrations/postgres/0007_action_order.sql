-- Operator actions made in the same millisecond (a retry, then a resolve)
-- came back in either order: `at_ms` was the only key to sort by. `seq`
-- numbers them in the order written (existing rows in table order), as
-- SQLite's rowid does.
ALTER TABLE operator_actions ADD COLUMN seq BIGSERIAL;
