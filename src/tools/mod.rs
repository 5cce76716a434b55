//! Commands beside the service, built on the library: load benchmarks, the Slack bridge, the
//! demo, a local receiver, an approval hook tester, and the receiving side (signature checks,
//! envelopes) they share.

/// `herald bench`: end-to-end throughput, latency and memory beside the machine's ceiling.
pub mod bench;
/// `herald bridge slack`: verified deliveries in, Slack messages out.
pub mod bridge;
/// `herald listen`: a local receiver that prints and checks each delivery.
pub mod catch_up;
/// `herald demo`: a temporary Herald playing a build to a local receiver.
pub mod demo;
/// `herald hook test`: a sample approval call to a hook, its answer and the decision.
pub mod hook;
pub mod listen;
/// The receiving side: checking both signature schemes and reading FLAT or DATA envelopes.
pub mod receive;
