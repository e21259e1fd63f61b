//! VMess (AEAD and legacy headers), wire-compatible with V2Ray 4.34.
