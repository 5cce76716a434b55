//! Herald's integration tests: the real server over HTTP, a recording receiver, both backends.

mod api;
mod cli;
mod delivery;
mod scale;
mod security;
mod support;
