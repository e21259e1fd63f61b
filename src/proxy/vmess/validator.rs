//! The server's users: AEAD AuthID matching with precomputed AES key schedules, and the legacy
//! HMAC-MD5 hash table kept for the ±120 s window (PROTOCOLS.md §2.3, §3.3).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use aes::Aes128;
use aes::cipher::{BlockCipherDecrypt, KeyInit};

use super::kdf::{self, hmac_md5, kdf16};
use super::replay::{AuthIdFilter, SessionHistory};
use crate::config::VmessInboundConfig;
use crate::session::User;

/// AuthID and legacy timestamp window, seconds.
const WINDOW: i64 = 120;

/// Why an authenticator did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No user.
    NotFound,
    /// AEAD AuthID seen before.
    Replay,
    /// Legacy hash tainted by an earlier replay.
    Tainted,
}

struct ValidUser {
    id: [u8; 16],
    cmd_key: [u8; 16],
    /// Primary then alter IDs (legacy authentication uses any of them).
    legacy_ids: Vec<[u8; 16]>,
    user: User,
}

struct LegacyEntry {
    user: usize,
    ts: u64,
    tainted: bool,
}

/// HMAC-MD5(id, ts) for every id and every ts in the window; extended second by second as time goes.
#[derive(Default)]
struct LegacyTable {
    map: HashMap<[u8; 16], LegacyEntry>,
    /// Hashes added per timestamp, oldest first, so expiry is O(ids) per second.
    by_ts: VecDeque<(i64, Vec<[u8; 16]>)>,
    /// Last timestamp that has entries.
    end: Option<i64>,
}

/// Users of one VMess inbound with their replay memories.
pub struct Validator {
    users: Vec<ValidUser>,
    auth_ciphers: Vec<Aes128>,
    /// Read on the request path; extended and expired by [`Validator::maintain`]'s task when there is
    /// one (off the request path: with many users × alterIds a refresh is real work), else inline.
    legacy: RwLock<LegacyTable>,
    maintained: AtomicBool,
    auth_ids: Mutex<AuthIdFilter>,
    sessions: Mutex<SessionHistory>,
    behavior_seed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent in a harmful way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl Validator {
    /// Builds the user set of an inbound.
    pub fn new(cfg: &VmessInboundConfig) -> Self {
        let mut seed_hash = 0xcbf2_9ce4_8422_2325u64;
        let users: Vec<ValidUser> = cfg
            .clients
            .iter()
            .map(|c| {
                for b in c.id.0 {
                    seed_hash = (seed_hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
                }
                let mut legacy_ids = vec![c.id.0];
                legacy_ids.extend(kdf::alter_ids(&c.id.0, c.alter_id));
                ValidUser {
                    id: c.id.0,
                    cmd_key: kdf::cmd_key(&c.id.0),
                    legacy_ids,
                    user: User { email: c.email.as_deref().map(Into::into), level: c.level },
                }
            })
            .collect();
        let auth_ciphers =
            users.iter().map(|u| Aes128::new(&kdf16(&u.cmd_key, &[kdf::LABEL_AUTH_ID]).into())).collect();
        Validator {
            users,
            auth_ciphers,
            legacy: RwLock::default(),
            maintained: AtomicBool::new(false),
            auth_ids: Mutex::default(),
            sessions: Mutex::default(),
            behavior_seed: seed_hash,
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True with no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// A per-user-set constant, like Go's behaviour seed: makes drain sizes stable per server.
    pub fn behavior_seed(&self) -> u64 {
        self.behavior_seed
    }

    /// The cmdKey of user `i`.
    pub fn cmd_key(&self, i: usize) -> &[u8; 16] {
        &self.users[i].cmd_key
    }

    /// The routing identity of user `i`.
    pub fn user(&self, i: usize) -> &User {
        &self.users[i].user
    }

    /// Finds the user whose AuthID key decrypts `auth_id` to a valid block within ±120 s of `now`,
    /// then records the AuthID against replays.
    pub fn match_aead(&self, auth_id: &[u8; 16], now: i64) -> Result<usize, AuthError> {
        for (i, cipher) in self.auth_ciphers.iter().enumerate() {
            let mut block = aes::Block::from(*auth_id);
            cipher.decrypt_block(&mut block);
            let b: [u8; 16] = block.into();
            if crc32fast::hash(&b[..12]) != u32::from_be_bytes([b[12], b[13], b[14], b[15]]) {
                continue;
            }
            let t = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            if t < 0 || (t - now).abs() > WINDOW {
                continue;
            }
            if !lock(&self.auth_ids).check_and_insert(auth_id, now) {
                return Err(AuthError::Replay);
            }
            return Ok(i);
        }
        Err(AuthError::NotFound)
    }

    /// Looks up a legacy user hash; returns the user and the timestamp it was made for (within ±120 s
    /// of `now`). With a maintenance task the lookup only reads the table.
    pub fn match_legacy(&self, hash: &[u8; 16], now: i64) -> Result<(usize, u64), AuthError> {
        if !self.maintained.load(Ordering::Relaxed) {
            self.refresh(now);
        }
        match read(&self.legacy).map.get(hash) {
            Some(e) if (e.ts as i64 - now).abs() > WINDOW => Err(AuthError::NotFound),
            Some(e) if e.tainted => Err(AuthError::Tainted),
            Some(e) => Ok((e.user, e.ts)),
            None => Err(AuthError::NotFound),
        }
    }

    /// Keeps the legacy table current from a background task, so no request ever computes hashes (with
    /// many users × alterIds that took seconds under a global lock). The first fill happens here, at
    /// start. Outside a tokio runtime nothing is spawned and lookups refresh inline. The task ends
    /// when the validator is dropped.
    pub fn maintain(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        self.refresh(super::unix_now());
        self.maintained.store(true, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(v) = weak.upgrade() else { return };
                if tokio::task::spawn_blocking(move || v.refresh(super::unix_now())).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Marks a legacy hash as used by a replay: later uses are refused while it stays in the window.
    pub fn taint(&self, hash: &[u8; 16]) {
        if let Some(e) = write(&self.legacy).map.get_mut(hash) {
            e.tainted = true;
        }
    }

    /// Records a (user, key, IV) session; false if seen in the last 3 minutes.
    pub fn check_session(&self, user: usize, key: &[u8; 16], iv: &[u8; 16], now: i64) -> bool {
        lock(&self.sessions).add_if_not_exists(user, key, iv, now)
    }

    /// Drops hashes older than the window and adds those for the seconds not covered yet; the hashes
    /// are computed before the table is locked for writing.
    fn refresh(&self, now: i64) {
        let first = now - WINDOW;
        let last = now + WINDOW;
        let start = match read(&self.legacy).end {
            Some(end) if end >= first => end + 1,
            _ => first,
        };
        let fresh: Vec<(i64, Vec<[u8; 16]>)> = (start.max(0)..=last)
            .map(|ts| {
                let hashes = self
                    .users
                    .iter()
                    .flat_map(|u| u.legacy_ids.iter().map(move |id| hmac_md5(id, &(ts as u64).to_be_bytes())))
                    .collect();
                (ts, hashes)
            })
            .collect();
        let mut table = write(&self.legacy);
        while table.by_ts.front().is_some_and(|(ts, _)| *ts < first) {
            if let Some((_, hashes)) = table.by_ts.pop_front() {
                for h in hashes {
                    table.map.remove(&h);
                }
            }
        }
        for (ts, hashes) in fresh {
            if table.end.is_some_and(|e| ts <= e) {
                continue; // another refresh got here first
            }
            let mut i = 0;
            for (ui, u) in self.users.iter().enumerate() {
                for _ in &u.legacy_ids {
                    table.map.entry(hashes[i]).or_insert(LegacyEntry { user: ui, ts: ts as u64, tainted: false });
                    i += 1;
                }
            }
            table.by_ts.push_back((ts, hashes));
            table.end = Some(ts);
        }
    }

    /// The raw id of user `i` (for tests).
    #[doc(hidden)]
    pub fn id(&self, i: usize) -> &[u8; 16] {
        &self.users[i].id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SecretId, VmessClientConfig};

    fn cfg(n: usize, alter: u16) -> VmessInboundConfig {
        let mut c = VmessInboundConfig::default();
        for i in 0..n {
            c.clients.push(VmessClientConfig {
                id: SecretId([i as u8 + 1; 16]),
                alter_id: alter,
                level: 0,
                email: None,
            });
        }
        c
    }

    #[test]
    fn legacy_window_moves_with_time() {
        let v = Validator::new(&cfg(2, 1));
        let t = 1_700_000_000i64;
        let id = kdf::alter_ids(&[2; 16], 1)[0];
        let h = hmac_md5(&id, &((t - 125) as u64).to_be_bytes());
        assert!(v.match_legacy(&h, t).is_err());
        let h = hmac_md5(&id, &((t - 115) as u64).to_be_bytes());
        assert_eq!(v.match_legacy(&h, t), Ok((1, (t - 115) as u64)));
        assert!(v.match_legacy(&h, t + 10).is_err());
        let future = hmac_md5(&[1; 16], &((t + 200) as u64).to_be_bytes());
        assert!(v.match_legacy(&future, t).is_err());
        assert_eq!(v.match_legacy(&future, t + 90), Ok((0, (t + 200) as u64)));
        // Entries per second stay bounded: 241 seconds × 2 users × 2 ids.
        assert_eq!(read(&v.legacy).map.len(), 241 * 4);
        v.taint(&future);
        assert_eq!(v.match_legacy(&future, t + 90), Err(AuthError::Tainted));
    }

    /// With a maintenance task, lookups never compute hashes: the table is filled at start and kept
    /// current in the background, and a lookup is a read of it.
    #[tokio::test]
    async fn a_maintained_table_is_filled_at_start_and_read_only_on_lookups() {
        let v = Arc::new(Validator::new(&cfg(3, 4)));
        v.maintain();
        let now = super::super::unix_now();
        let full = read(&v.legacy).map.len();
        assert_eq!(full, 241 * 3 * 5);
        let id = kdf::alter_ids(&[3; 16], 4)[2];
        let h = hmac_md5(&id, &((now - 30) as u64).to_be_bytes());
        assert_eq!(v.match_legacy(&h, now), Ok((2, (now - 30) as u64)));
        // A timestamp outside the window of `now` is refused even while the table still holds it.
        let stale = hmac_md5(&id, &((now + 100) as u64).to_be_bytes());
        assert_eq!(v.match_legacy(&stale, now - 30), Err(AuthError::NotFound));
        assert_eq!(read(&v.legacy).map.len(), full, "a lookup changed the table");
    }

    #[test]
    fn aead_match_many_users() {
        let v = Validator::new(&cfg(200, 0));
        let t = 1_700_000_000;
        let ck = kdf::cmd_key(&[150; 16]);
        let id = super::super::header::create_auth_id(&ck, t, [1, 2, 3, 4]);
        assert_eq!(v.match_aead(&id, t + 3), Ok(149));
        assert_eq!(v.match_aead(&id, t + 3), Err(AuthError::Replay));
    }
}
