//! The outbox: every change's event and its rendered deliveries, written in the change's own
//! transaction by the process's one writer of changes ([`Writer`]).
//!
//! A selection is checked when it is saved ([`selection::prepare`] and [`Renderer::check`]),
//! parsed once and cached, and run inside the transaction of the change it describes, so the
//! body shows the state at the event and every attempt sends the same bytes.

pub mod audit;
pub mod change;
pub mod ids;
pub mod outbox;
pub mod published;
pub mod render;
pub mod samples;
pub mod selection;
pub mod writer;

pub use change::Change;
pub use outbox::Outbox;
pub use render::{Rendered, Renderer, envelope};
pub use selection::{CIRRUS_DOCUMENTED_SELECTION, DEFAULT_SELECTION};
pub use writer::Writer;
