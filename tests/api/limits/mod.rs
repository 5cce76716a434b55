//! What one organization's token can send is bounded: strings Herald cannot store, input
//! sizes and counts, and the work a query or a stored selection may do.
//!
//! The tests are declared here, so that their names stay `limits::…`, beside the helpers the
//! files share; their bodies are in `inputs.rs` and `work.rs`.

mod inputs;
mod work;

use serde_json::Value;

use crate::support::{TestApp, code};

use inputs::{
    a_nul_in_any_string_input_is_refused_alone_and_named,
    a_url_too_long_once_encoded_is_refused_and_nothing_is_stored,
    accumulating_inputs_stop_at_their_bounds,
    inputs_past_their_bounds_are_refused_and_change_nothing,
};
use work::{
    an_oversized_payload_is_recorded_as_a_failed_delivery_with_its_reason,
    deliveries_to_an_endpoint_that_cannot_be_read_fail_with_the_reason,
    queries_cost_the_most_tasks_a_build_may_have_and_stop_at_their_row_budget,
};

crate::on_both_backends!(
    a_nul_in_any_string_input_is_refused_alone_and_named,
    inputs_past_their_bounds_are_refused_and_change_nothing,
    accumulating_inputs_stop_at_their_bounds,
    a_url_too_long_once_encoded_is_refused_and_nothing_is_stored,
    queries_cost_the_most_tasks_a_build_may_have_and_stop_at_their_row_budget,
    an_oversized_payload_is_recorded_as_a_failed_delivery_with_its_reason,
    deliveries_to_an_endpoint_that_cannot_be_read_fail_with_the_reason,
);

/// Runs a request that must be refused with BAD_USER_INPUT and `expected` as its message.
async fn refused(app: &TestApp, token: &str, query: &str, variables: Value, expected: &str) {
    let response = app.gql(Some(token), query, variables).await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
    assert_eq!(message(&response), expected, "{response}");
}

fn message(response: &Value) -> &str {
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
}

const CREATE_BUILD: &str =
    "mutation($input: CreateBuildInput!) { createBuild(input: $input) { build { id } } }";
const CREATE_TASK: &str =
    "mutation($input: CreateTaskInput!) { createTask(input: $input) { task { id } } }";
const UPDATE_TASK: &str =
    "mutation($input: UpdateTaskStatusInput!) { updateTaskStatus(input: $input) { task { id } } }";
