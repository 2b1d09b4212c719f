//! The travel example's programs, each a `main` here and a five-line file
//! in `src/bin`: they live in the library so that the tests build the very
//! same programs (with the SDK's fail points on) and run them as the README
//! prints them.

pub mod book_trip;
pub mod demo;
pub mod travel_service;
