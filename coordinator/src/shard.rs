//! Shards and the shard map (DESIGN §11), from the `concord-shard` crate
//! the client SDK shares; the coordinator's transaction ids are ids a
//! shard is written into (`model::TxnId` implements [`ShardedId`]).

pub use concord_shard::*;
