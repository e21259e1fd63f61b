//! The router: `type: "field"` rules matched in order; the first match names the outbound.

use crate::config::RoutingConfig;
use crate::session::Session;

/// Why routing rules could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A rule condition is invalid (bad regexp...).
    #[error("{path}: {message}")]
    Invalid {
        /// JSON path of the rule.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Compiled routing rules.
#[derive(Debug, Default)]
pub struct Router {
    rules: Vec<crate::config::RuleConfig>,
}

impl Router {
    /// Compiles the rules.
    pub fn new(config: &RoutingConfig) -> Result<Router, RouterError> {
        Ok(Router { rules: config.rules.clone() })
    }

    /// The outbound tag of the first rule that matches, or None (use the default outbound).
    pub async fn pick(&self, session: &Session) -> Option<&str> {
        // Placeholder until the real matcher lands: inboundTag and full: domains only.
        self.rules.iter().find_map(|r| {
            let tag_ok = r.inbound_tag.is_empty()
                || session.inbound_tag.as_deref().is_some_and(|t| r.inbound_tag.iter().any(|x| x == t));
            let dom_ok = r.domain.is_empty()
                || session.target.address.domain().is_some_and(|d| {
                    r.domain.iter().any(|m| matches!(m, crate::config::DomainMatcher::Full(f) if f == d))
                });
            (tag_ok && dom_ok).then_some(r.outbound_tag.as_str())
        })
    }
}
