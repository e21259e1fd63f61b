//! oxray: a Rust implementation of V2Ray's core, built around its reverse proxy.

pub mod config;
pub mod demo;
pub mod dispatch;
pub mod dns;
pub mod instance;
pub mod lint;
pub mod log;
pub mod mux;
pub mod ops;
pub mod proxy;
pub mod reverse;
pub mod router;
pub mod session;
pub mod stats;
pub mod task;
#[doc(hidden)]
pub mod testing;
pub mod transport;
pub mod wire;
