//! fn main placeholder replaced below
