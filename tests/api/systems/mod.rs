//! Receivers of other systems, as they were written: each signature style checked by that
//! system's own verification code, Foundries.io's build body from a RAW selection, Codeup's and
//! Kudu's events published, and named secrets, rotations and custom headers.
//!
//! The tests are declared here, so that their names stay `systems::…`.

mod foundries;
mod published;
mod secrets;
mod styles;
mod verify;

use crate::support::Backend;
use published::{
    codeup_receives_published_git_events_with_its_token_and_credentials,
    kudu_post_deployment_reaches_an_unsigned_endpoint,
};
use secrets::{
    custom_headers_are_sent_and_shown_masked, refused_inputs_answer_one_sentence_and_change_nothing,
};
use styles::{
    each_style_verifies_as_its_own_receivers_do,
    rotations_overlap_for_receivers_holding_either_secret,
};

crate::on_both_backends!(
    each_style_verifies_as_its_own_receivers_do,
    rotations_overlap_for_receivers_holding_either_secret,
    codeup_receives_published_git_events_with_its_token_and_credentials,
    kudu_post_deployment_reaches_an_unsigned_endpoint,
    custom_headers_are_sent_and_shown_masked,
    refused_inputs_answer_one_sentence_and_change_nothing,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_selection_reproduces_the_foundries_build_body_on_sqlite() {
    foundries::a_raw_selection_reproduces_the_foundries_build_body(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_selection_reproduces_the_foundries_build_body_on_postgres() {
    foundries::a_raw_selection_reproduces_the_foundries_build_body(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_named_secret_signs_every_later_attempt_on_sqlite() {
    styles::a_changed_named_secret_signs_every_later_attempt(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_named_secret_signs_every_later_attempt_on_postgres() {
    styles::a_changed_named_secret_signs_every_later_attempt(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_secrets_are_sealed_at_rest() {
    secrets::receiver_secrets_are_sealed_at_rest().await;
}
