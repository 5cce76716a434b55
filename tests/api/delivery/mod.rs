//! The delivery engine: what arrives, signed how, retried when, in which order.
//!
//! The tests are declared here, so that their names stay `delivery::…`, beside the helpers the
//! files share; their bodies are in the files below, by concern.

mod order;
mod outcomes;
mod payloads;
mod retries;

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Receiver, Reply, TestApp, World};

use order::{
    a_retrying_delivery_holds_back_its_own_build_only,
    changes_sent_at_once_get_their_own_answers_and_payloads,
    each_build_arrives_in_order_under_a_slow_receiver,
};
use outcomes::{
    shutdown_gives_back_claims_it_did_not_send, shutdown_lets_in_flight_attempts_finish,
};
use payloads::{
    a_selection_whose_field_fails_still_lets_the_change_through,
    build_and_task_events_arrive_signed_with_cirrus_and_standard_headers,
    event_filters_and_unchanged_statuses, flat_and_custom_selections_shape_the_body,
    no_signature_headers_without_a_secret, payloads_show_the_state_at_the_event,
    preview_equals_what_is_sent,
};
use retries::{
    a_spent_schedule_fails_the_delivery, failures_are_retried_with_the_same_id_and_bytes,
    gone_disables_the_endpoint, redelivery_and_test_pings,
    redelivery_waits_for_the_attempt_under_way_and_an_enabled_endpoint, redirects_are_not_followed,
    retry_after_is_honoured,
};

crate::on_both_backends!(
    build_and_task_events_arrive_signed_with_cirrus_and_standard_headers,
    flat_and_custom_selections_shape_the_body,
    no_signature_headers_without_a_secret,
    event_filters_and_unchanged_statuses,
    payloads_show_the_state_at_the_event,
    failures_are_retried_with_the_same_id_and_bytes,
    a_spent_schedule_fails_the_delivery,
    retry_after_is_honoured,
    gone_disables_the_endpoint,
    redirects_are_not_followed,
    redelivery_and_test_pings,
    redelivery_waits_for_the_attempt_under_way_and_an_enabled_endpoint,
    a_selection_whose_field_fails_still_lets_the_change_through,
    preview_equals_what_is_sent,
    each_build_arrives_in_order_under_a_slow_receiver,
    changes_sent_at_once_get_their_own_answers_and_payloads,
    a_retrying_delivery_holds_back_its_own_build_only,
    shutdown_lets_in_flight_attempts_finish,
    shutdown_gives_back_claims_it_did_not_send,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_outcome_rolled_back_in_a_deadlock_is_written_again() {
    outcomes::on_postgres_an_outcome_rolled_back_in_a_deadlock_is_written_again().await;
}

const DELIVERIES: &str = "query($endpoint: ID) { viewer { webhookDeliveries(endpointId: $endpoint) { edges { node {
    id state attempts event action nextAttemptTimestamp payload { event action data } response { status data duration }
    attemptLog { number status error duration responseData responseHeaders timestamp } } } } } }";

async fn deliveries(app: &TestApp, world: &World) -> Vec<Value> {
    let data = app.ok(&world.admin, DELIVERIES, json!({})).await;
    data["viewer"]["webhookDeliveries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"].clone())
        .collect()
}

/// Waits until the newest delivery reaches `state`.
async fn settled(app: &TestApp, world: &World, state: &str) -> Value {
    for _ in 0..200 {
        let all = deliveries(app, world).await;
        if all.first().is_some_and(|d| d["state"] == state) {
            return all[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the delivery never reached {state}: {:#?}",
        deliveries(app, world).await
    );
}

/// A receiver that answers after 800 ms, an organization with an endpoint for it, and a build
/// whose delivery is on its way.
async fn a_build_answered_slowly(app: &TestApp) -> (Receiver, World) {
    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::status(200).delay(Duration::from_millis(800)));
    let world = World::new(app, "acme").await;
    world.endpoint(app, &receiver.url("/hook"), json!({})).await;
    world.build(app).await;
    (receiver, world)
}
