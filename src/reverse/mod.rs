//! The reverse proxy: bridge (dials out, serves Mux) and portal (accepts tunnels, sends sessions in).

pub mod bridge;
pub mod control;
pub mod portal;
pub mod status;
pub mod track;

use crate::session::{Destination, Network};

/// V2Ray 4.34's control-session domain.
pub const INTERNAL_DOMAIN_V4: &str = "reverse.internal.v2ray.com";
/// v2fly v4.35+/v5's (and Xray 1.5.4–25.9.5's) control-session domain; oxray's portal default.
pub const INTERNAL_DOMAIN_V5: &str = "reverse.internal.v2fly.org";
/// Early Xray's control-session domain.
pub const INTERNAL_DOMAIN_XRAY_OLD: &str = "reverse.internal.example.com";

/// True if a session's target is a portal's control session, whichever implementation sent it. The bare
/// `reverse` (Xray ≥ 25.9.10) counts only as UDP to port 0, since a real host may be called `reverse`.
pub fn is_internal_domain(target: &Destination) -> bool {
    match target.address.domain() {
        Some(INTERNAL_DOMAIN_V4 | INTERNAL_DOMAIN_V5 | INTERNAL_DOMAIN_XRAY_OLD) => true,
        Some("reverse") => target.network == Network::Udp && target.port == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Address;

    #[test]
    fn every_known_internal_domain_is_recognised() {
        for d in [INTERNAL_DOMAIN_V4, INTERNAL_DOMAIN_V5, INTERNAL_DOMAIN_XRAY_OLD] {
            assert!(is_internal_domain(&Destination::udp(Address::parse(d), 0)), "{d}");
            // Network and port are not checked for the dotted names, as in V2Ray.
            assert!(is_internal_domain(&Destination::tcp(Address::parse(d), 80)), "{d}");
        }
        assert!(is_internal_domain(&Destination::udp(Address::parse("reverse"), 0)));
    }

    #[test]
    fn ordinary_targets_are_not_internal() {
        // A real host may be called `reverse`: only UDP to port 0 counts.
        assert!(!is_internal_domain(&Destination::tcp(Address::parse("reverse"), 0)));
        assert!(!is_internal_domain(&Destination::udp(Address::parse("reverse"), 53)));
        // Exact, case-sensitive comparison.
        assert!(!is_internal_domain(&Destination::udp(Address::parse("Reverse.Internal.V2Ray.com"), 0)));
        assert!(!is_internal_domain(&Destination::udp(Address::parse("x.reverse.internal.v2fly.org"), 0)));
        assert!(!is_internal_domain(&Destination::tcp(Address::parse("127.0.0.1"), 80)));
    }
}
