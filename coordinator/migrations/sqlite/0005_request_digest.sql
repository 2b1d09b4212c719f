-- The SHA-256 of the request an idempotency key was first used with
-- (hex; NULL without a key, and for transactions begun before this
-- migration). A later Begin or SubmitSaga with the same key and another
-- body is refused with ALREADY_EXISTS instead of silently answering with
-- the first transaction (R7; docs/design.md, "Idempotency keys").
ALTER TABLE transactions ADD COLUMN request_digest TEXT;
