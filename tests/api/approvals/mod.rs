//! Approval hooks through GraphQL, with a scripted hook: approve (the work id in later
//! deliveries), reject (nothing recorded), hold then approve, no valid answer under each
//! `whenUnavailable`, several hooks, internal addresses, and a tarpit hook of one organization
//! that does not slow another's builds.

mod decisions;
mod isolation;

use decisions::{
    a_held_build_waits_for_an_admin, a_hook_decides_the_build_it_held_with_its_one_time_link,
    a_named_secret_signs_a_hook_and_stays_while_it_does, a_rejecting_hook_records_nothing,
    an_approving_hook_gives_its_work_id_to_every_delivery, every_hook_must_approve,
    no_valid_answer_decides_by_when_unavailable,
};

crate::on_both_backends!(
    an_approving_hook_gives_its_work_id_to_every_delivery,
    a_rejecting_hook_records_nothing,
    a_held_build_waits_for_an_admin,
    a_hook_decides_the_build_it_held_with_its_one_time_link,
    no_valid_answer_decides_by_when_unavailable,
    every_hook_must_approve,
    a_named_secret_signs_a_hook_and_stays_while_it_does,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_hook_urls_are_refused_on_sqlite() {
    isolation::internal_hook_urls_are_refused(crate::support::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_hook_urls_are_refused_on_postgres() {
    isolation::internal_hook_urls_are_refused(crate::support::Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpit_hook_does_not_slow_another_organizations_builds_on_sqlite() {
    isolation::a_tarpit_hook_does_not_slow_another_organizations_builds(
        crate::support::Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpit_hook_does_not_slow_another_organizations_builds_on_postgres() {
    isolation::a_tarpit_hook_does_not_slow_another_organizations_builds(
        crate::support::Backend::Postgres,
    )
    .await;
}
