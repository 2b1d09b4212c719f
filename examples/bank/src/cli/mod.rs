//! The bank example's programs, each a `main` here and a five-line file in
//! `src/bin`: they live in the library so that the tests build the very
//! same programs (with the SDK's fail points on) and run them as the README
//! prints them.

pub mod account_service;
pub mod demo;
pub mod transfer;
