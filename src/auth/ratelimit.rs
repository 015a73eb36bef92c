//! Failed-login throttling per source address and per user name, so passwords cannot be guessed at line rate.
//! In memory and per process: it needs to slow an attacker, not to be exact across restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Keys tracked at most; beyond it the oldest windows are dropped (bounded memory under a spray of addresses).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(String),
}

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<Key, (Instant, u32)>>,
}

impl LoginLimiter {
    /// Allows `max_failures` failed logins per `window` for each address and each user name; 0 disables.
    pub fn new(max_failures: u32, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(ip: Option<IpAddr>, user: &str) -> Vec<Key> {
        let mut k = vec![Key::User(user.to_owned())];
        // Loopback is where health checks and local tooling live; a typo there must not lock out everyone.
        if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
            k.push(Key::Ip(ip));
        }
        k
    }

    /// Seconds until another attempt is allowed, when the address or the user is over the limit.
    pub fn blocked(&self, ip: Option<IpAddr>, user: &str) -> Option<u64> {
        if self.max_failures == 0 {
            return None;
        }
        let now = Instant::now();
        let map = self.failures.lock();
        Self::keys(ip, user)
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|(start, n)| {
                *n >= self.max_failures && now.duration_since(*start) < self.window
            })
            .map(|(start, _)| (self.window - now.duration_since(*start)).as_secs().max(1))
            .max()
    }

    pub fn record_failure(&self, ip: Option<IpAddr>, user: &str) {
        if self.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.failures.lock();
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        for k in Self::keys(ip, user) {
            let e = map.entry(k).or_insert((now, 0));
            if now.duration_since(e.0) >= self.window {
                *e = (now, 0);
            }
            e.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_per_user_and_address() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.blocked(Some(ip), "alice").is_none());
            l.record_failure(Some(ip), "alice");
        }
        assert!(l.blocked(Some(ip), "alice").is_some());
        assert!(l.blocked(Some(ip), "bob").is_some(), "same address");
        assert!(
            l.blocked(Some("192.0.2.2".parse().unwrap()), "alice")
                .is_some(),
            "same user"
        );
        assert!(
            l.blocked(Some("192.0.2.2".parse().unwrap()), "bob")
                .is_none()
        );
    }

    #[test]
    fn zero_disables() {
        let l = LoginLimiter::new(0, Duration::from_secs(60));
        l.record_failure(None, "a");
        assert!(l.blocked(None, "a").is_none());
    }
}
