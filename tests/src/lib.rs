//! Integration tests live under `tests/tests/<area>/`; this crate has no library code.
