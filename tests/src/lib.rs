//! Integration tests live under `tests/tests/<area>/`. This crate's own code
//! is the programs under `src/bin/`: Concord's real binaries built with fail
//! points on, for the crash tests to start and kill.
