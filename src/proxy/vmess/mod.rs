//! VMess (AEAD and legacy headers), wire-compatible with V2Ray 4.34.
//!
//! Codec files are pure (no I/O): `kdf` (key derivation), `header` (request/response headers and the
//! server handshake state machine), `body` (chunks), `replay` and `validator` (users and anti-replay).
//! `stream` wraps them into AsyncRead/AsyncWrite; `inbound` and `outbound` are the tokio handlers.

pub mod body;
pub mod header;
pub mod inbound;
pub mod kdf;
pub mod outbound;
pub mod replay;
pub mod stream;
pub mod validator;

pub use inbound::{VmessError, VmessInbound};
pub use outbound::{ClientUser, VmessOutbound};
pub use stream::VmessStream;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
