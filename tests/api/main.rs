//! Herald's integration tests: the real server over HTTP, a recording receiver, both backends.

mod api;
mod approvals;
mod bridge;
mod bridge_app;
mod bridge_app_cli;
mod cirrus;
mod cli;
mod delivery;
mod edges;
mod fairness;
mod fake_slack;
mod fake_slack_api;
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
