//! Anti-replay memories: the AEAD AuthID filter and the (user, key, IV) session history.

use std::collections::{HashMap, HashSet};

/// How long an AuthID is remembered per generation (Go rotates its cuckoo filters every 120 s).
const AUTH_ID_GENERATION: i64 = 120;
/// How long a session tuple is remembered (Go's SessionHistory: 3 minutes).
const SESSION_TTL: i64 = 180;
/// How often expired session tuples are swept.
const SESSION_SWEEP: i64 = 30;

/// Two rotating generations of seen AuthIDs: an ID is remembered for 120–240 s, longer than the
/// ±120 s window in which it could be accepted again.
#[derive(Default)]
pub struct AuthIdFilter {
    current: HashSet<[u8; 16]>,
    previous: HashSet<[u8; 16]>,
    started: i64,
}

impl AuthIdFilter {
    /// Records `id` at `now`; false if it was seen before (a replay).
    pub fn check_and_insert(&mut self, id: &[u8; 16], now: i64) -> bool {
        if now - self.started >= AUTH_ID_GENERATION {
            self.previous = std::mem::take(&mut self.current);
            if now - self.started >= 2 * AUTH_ID_GENERATION {
                self.previous.clear();
            }
            self.started = now;
        }
        if self.previous.contains(id) {
            return false;
        }
        self.current.insert(*id)
    }
}

/// Key of the session history: user index, request body key and IV.
type SessionKey = (usize, [u8; 16], [u8; 16]);

/// Recently seen (user, body key, body IV) tuples.
#[derive(Default)]
pub struct SessionHistory {
    seen: HashMap<SessionKey, i64>,
    last_sweep: i64,
}

impl SessionHistory {
    /// Records the tuple at `now`; false if it was seen in the last 3 minutes.
    pub fn add_if_not_exists(&mut self, user: usize, key: &[u8; 16], iv: &[u8; 16], now: i64) -> bool {
        if now - self.last_sweep >= SESSION_SWEEP {
            self.seen.retain(|_, expiry| *expiry > now);
            self.last_sweep = now;
        }
        let k = (user, *key, *iv);
        if let Some(&expiry) = self.seen.get(&k)
            && expiry > now
        {
            return false;
        }
        self.seen.insert(k, now + SESSION_TTL);
        true
    }

    /// Number of remembered tuples.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_id_filter_remembers_across_one_rotation() {
        let mut f = AuthIdFilter::default();
        let t = 1_000_000;
        assert!(f.check_and_insert(&[1; 16], t));
        assert!(!f.check_and_insert(&[1; 16], t + 1));
        assert!(!f.check_and_insert(&[1; 16], t + 130));
        assert!(f.check_and_insert(&[1; 16], t + 500));
    }

    #[test]
    fn session_history_expires() {
        let mut h = SessionHistory::default();
        assert!(h.add_if_not_exists(0, &[1; 16], &[2; 16], 100));
        assert!(!h.add_if_not_exists(0, &[1; 16], &[2; 16], 200));
        assert!(h.add_if_not_exists(1, &[1; 16], &[2; 16], 200));
        assert!(h.add_if_not_exists(0, &[1; 16], &[2; 16], 281));
        h.add_if_not_exists(5, &[0; 16], &[0; 16], 1000);
        assert_eq!(h.len(), 1);
    }
}
