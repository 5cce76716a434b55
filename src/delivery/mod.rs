//! Delivery: the worker loop, the outbound client and its SSRF guard, and what each attempt's
//! answer means.

pub mod client;
pub mod guard;
pub mod listener;
pub mod outcome;
pub mod worker;

pub use worker::Worker;
