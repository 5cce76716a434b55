//! What receivers of CI events ask for beyond every status: only the changes of a branch
//! (transition conditions), and a sequence per endpoint that lets them notice a missed delivery
//! and fetch it.
//!
//! The tests are declared here, so that their names stay `signals::…`.

mod catch_up;
mod conditions;
mod sequence;

use conditions::{
    a_rerun_that_passes_fixes_the_branch, an_upgrade_starts_each_branch_from_its_last_finish,
    concurrent_finishes_on_a_branch_compare_with_each_other,
    conditions_send_only_the_changes_of_each_branch,
};
use sequence::{
    each_endpoint_numbers_its_deliveries_without_gaps,
    webhook_events_refuses_bad_ranges_and_other_organizations,
};

crate::on_both_backends!(
    a_rerun_that_passes_fixes_the_branch,
    an_upgrade_starts_each_branch_from_its_last_finish,
    conditions_send_only_the_changes_of_each_branch,
    concurrent_finishes_on_a_branch_compare_with_each_other,
    each_endpoint_numbers_its_deliveries_without_gaps,
    webhook_events_refuses_bad_ranges_and_other_organizations,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_catches_up_on_what_it_missed_on_sqlite() {
    catch_up::a_killed_listener_catches_up_on_what_it_missed(crate::support::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_catches_up_on_what_it_missed_on_postgres() {
    catch_up::a_killed_listener_catches_up_on_what_it_missed(crate::support::Backend::Postgres)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_following_another_endpoint_refuses_its_deliveries_on_sqlite() {
    catch_up::a_listener_following_another_endpoint_refuses_its_deliveries(
        crate::support::Backend::Sqlite,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_following_another_endpoint_refuses_its_deliveries_on_postgres() {
    catch_up::a_listener_following_another_endpoint_refuses_its_deliveries(
        crate::support::Backend::Postgres,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_refused_at_start_ends_the_listener() {
    catch_up::a_feed_refused_at_start_ends_the_listener(crate::support::Backend::Sqlite).await;
}
