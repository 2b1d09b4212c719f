//! The protocols as pure state machines: events in, effects out. No `async`,
//! no clock, no I/O — the runtime (`crate::runtime`) executes the effects.
//! This is the part a simulation and a reader can hold in their head.
//!
//! - [`two_phase`]: two-phase commit with presumed abort (DESIGN §2, R1–R6).
//! - [`saga`]: compensating sagas over a step graph (DESIGN §3, I4).
//! - [`message`]: transactional messages (DESIGN §10, M1–M6).

pub mod message;
pub mod saga;
pub mod two_phase;
