//! Cirrus CI's receivers, as they were written: FLAT bodies with the keys and JSON types of
//! the bodies Cirrus sends (`tests/golden/cirrus/`), decoded by strict typed structs modelled
//! on a Go receiver; and audit events, recorded with each mutation and sent to the endpoints
//! that ask.
//!
//! The tests are declared here, so that their names stay `cirrus::…`; their bodies are in
//! `flat.rs` and `audit.rs`.

mod audit;
mod flat;

use audit::{
    audit_events_reach_only_the_endpoints_that_ask_and_carry_no_secret,
    every_mutation_records_an_audit_event_and_a_failed_one_none,
};
use flat::{
    a_flat_ping_has_the_flat_shape, flat_bodies_decode_into_a_go_receivers_types,
    flat_bodies_have_the_keys_and_types_of_cirrus_bodies,
};

crate::on_both_backends!(
    flat_bodies_have_the_keys_and_types_of_cirrus_bodies,
    flat_bodies_decode_into_a_go_receivers_types,
    a_flat_ping_has_the_flat_shape,
    every_mutation_records_an_audit_event_and_a_failed_one_none,
    audit_events_reach_only_the_endpoints_that_ask_and_carry_no_secret,
);
