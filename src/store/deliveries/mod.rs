//! The outbox: events, deliveries and their attempts, and the queue the workers claim from.
//!
//! Every delivery not yet finished (`PENDING` or `RETRYING`) has a row in `delivery_queue`,
//! written in the same transactions as the delivery: what the claims read and the leases,
//! retries and releases write, so that those writes are of a few narrow columns and not of the
//! delivery's whole row. Finishing a delivery deletes its queue row.
//!
//! A delivery is claimed by setting its queue row's lease (`lease_until`) and a fresh fencing
//! token (`lease_token`). Only the holder of the current token may record the attempt's
//! outcome, so a worker that lost its lease (it stalled, or was presumed dead) changes nothing.
//!
//! A delivery of a build is in that build's chain for its endpoint: a delivery is due only when
//! no earlier delivery of its (endpoint, build) chain is unfinished, so one endpoint sees one
//! build's events in order. A delivery behind an unfinished one is `held` in its queue row, and
//! the transaction that finishes a delivery releases the next one of its chain.
//!
//! By concern: `events` records events and queues their deliveries; `queue` holds the other
//! writes of the queue (pings, failed deliveries, releases, redeliveries, deletions); `claims`
//! leases due deliveries to the workers; `outcomes` records their attempts; `finders` reads
//! deliveries and attempts for the API; `sequence` numbers each endpoint's deliveries. Callers name everything through this module.

mod claims;
mod events;
mod finders;
mod outcomes;
mod queue;
mod sequence;
#[cfg(test)]
mod tests;

pub use claims::{ClaimRequest, Leased, Leases, claim};
pub use events::{EventDeliveries, NewEvent, insert_events, lock_chains, queue_events};
pub use finders::{attempts, find, last_of_endpoint, list};
pub use outcomes::{AttemptRecord, Recorded, record_attempts};
pub use queue::{
    CHANNEL, FailedDelivery, NewDelivery, announce, delete, give_back, insert_failed, insert_one,
    insert_unchained, queue_depth, redeliver, release_stranded, remove_orphans,
};
pub use sequence::{MAX_PAGE, Numbers, after};
