//! The GraphQL API: CI records, webhook settings, permissions and organization isolation.
//!
//! The tests are declared here, so that their names stay `api::…`; their bodies are in the files
//! below, by concern.

mod access;
mod endpoints;
mod records;

use access::{
    another_organizations_ids_are_not_found, bad_tokens_are_unauthenticated,
    permissions_are_enforced_on_every_level,
};
use endpoints::{
    bad_payload_selections_are_refused_and_nothing_is_stored,
    bad_urls_and_secrets_are_refused_and_nothing_is_stored,
    endpoints_are_created_updated_and_deleted,
    save_web_hook_settings_replaces_the_list_keyed_by_url, secrets_are_never_returned,
};
use records::records_repositories_builds_and_tasks;

crate::on_both_backends!(
    records_repositories_builds_and_tasks,
    permissions_are_enforced_on_every_level,
    another_organizations_ids_are_not_found,
    secrets_are_never_returned,
    bad_payload_selections_are_refused_and_nothing_is_stored,
    bad_urls_and_secrets_are_refused_and_nothing_is_stored,
    bad_tokens_are_unauthenticated,
    endpoints_are_created_updated_and_deleted,
    save_web_hook_settings_replaces_the_list_keyed_by_url,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_acknowledged_writes_wait_for_the_disk() {
    records::on_sqlite_acknowledged_writes_wait_for_the_disk().await;
}
