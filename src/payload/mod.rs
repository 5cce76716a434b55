//! Payloads: the stored GraphQL selections that decide what each delivery contains.
//!
//! A selection is checked when it is saved ([`selection::prepare`] and [`Renderer::check`]),
//! parsed once and cached, and run inside the transaction of the change it describes, so the
//! body shows the state at the event and every attempt sends the same bytes.

pub mod audit;
pub mod commit;
pub mod ids;
pub mod outbox;
pub mod render;
pub mod selection;

pub use render::{Rendered, Renderer, envelope};
pub use selection::{CIRRUS_DOCUMENTED_SELECTION, DEFAULT_SELECTION};
