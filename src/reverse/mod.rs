//! The reverse proxy: bridge (dials out, serves Mux) and portal (accepts tunnels, sends sessions in).
pub mod control;
