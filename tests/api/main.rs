//! Herald's integration tests: the real server over HTTP, a recording receiver, both backends.

mod api;
mod approvals;
mod bridge;
mod cirrus;
mod cli;
mod delivery;
mod edges;
mod fairness;
mod fake_slack;
mod graphiql;
mod http_limits;
mod limits;
mod receivers;
mod rest;
mod scale;
mod security;
mod signals;
mod slack_format;
mod support;
mod systems;
mod tokens;
