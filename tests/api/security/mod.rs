//! Hardened edges: the SSRF guard against canary listeners, hostile receivers, secrets that
//! never leak, and GraphQL request limits.
//!
//! The tests are declared here, so that their names stay `security::…`; their bodies are in the
//! files below, by concern.

mod graphql;
mod hostile;
mod leaks;
mod secrets;
mod ssrf;

use crate::support::Backend;

use hostile::hostile_receivers_are_bounded_in_time_and_bytes;
use secrets::secrets_are_sealed_at_rest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_catalogue_never_reaches_a_canary() {
    ssrf::the_ssrf_catalogue_never_reaches_a_canary().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_bounded_in_time_and_bytes_on_sqlite() {
    hostile_receivers_are_bounded_in_time_and_bytes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_bounded_in_time_and_bytes_on_postgres() {
    hostile_receivers_are_bounded_in_time_and_bytes(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_limits_apply_before_any_resolver() {
    graphql::graphql_limits_apply_before_any_resolver().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_on_sqlite() {
    secrets_are_sealed_at_rest(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_on_postgres() {
    secrets_are_sealed_at_rest(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_encryption_on_seals_the_secrets_already_stored() {
    secrets::turning_encryption_on_seals_the_secrets_already_stored().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_with_a_key_that_stopped_halfway_is_finished_by_the_next() {
    secrets::a_first_start_with_a_key_that_stopped_halfway_is_finished_by_the_next().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_appears_nowhere() {
    leaks::a_canary_secret_appears_nowhere().await;
}
