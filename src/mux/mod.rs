//! Mux.Cool: many sessions over one stream (PROTOCOLS.md §4).

pub mod client;
pub(crate) mod conn;
pub mod frame;
pub mod server;
mod stream;

pub use client::{MuxClient, MuxClientConfig};
pub use conn::MAX_SESSIONS;
pub use server::{MuxHandler, MuxServer};
pub use stream::{MuxPacket, MuxStream, bypass_relay};

use std::io;

/// The target domain that turns a connection into a Mux.Cool connection (any port).
pub const MUX_COOL_DOMAIN: &str = "v1.mux.cool";

/// Why a Mux operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The Mux connection has ended.
    #[error("mux connection closed")]
    Closed,
    /// The connection takes no more sessions (concurrency or total limit, or ids used up).
    #[error("mux connection is full")]
    Full,
    /// The peer sent an invalid frame.
    #[error("mux frame: {0}")]
    Frame(#[from] frame::FrameError),
    /// The peer opened more sessions at once than a connection takes.
    #[error("mux peer opened more than {0} sessions at once")]
    TooManySessions(usize),
    /// A UDP datagram above 2048 bytes.
    #[error("mux packet of {0} bytes is too large")]
    PacketTooLarge(usize),
    /// The underlying stream failed.
    #[error("mux i/o: {0}")]
    Io(#[from] io::Error),
}
