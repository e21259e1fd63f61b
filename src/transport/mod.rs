//! Transports under the protocols. Only raw TCP for now.

pub mod tcp;
