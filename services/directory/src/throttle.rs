//! Login throttling: repeated failed logins for one account, or from one
//! source address, slow down and are then refused for a while.
//!
//! Each account (the domain and user *as given*, whether or not they
//! exist) and each source address (an IPv4 address, or an IPv6 /64) has a
//! count of recent failures. The first `free` failures cost nothing; from
//! then on, each attempt must wait `1 s, 2 s, 4 s, …` (at most
//! `max_delay`) after the previous failure, and an earlier attempt is
//! answered `ResourceExhausted` with a `retry-after`, without the
//! password being checked — so a correct password does not get through a
//! throttle either, and an unknown account is throttled exactly like a
//! real one (nothing reveals which accounts exist). Failures older than
//! `window` are forgotten; a successful login clears its account's count
//! (not its address's: one valid account must not buy an address more
//! guesses at others).
//!
//! The counts are kept per directory node, in bounded caches: with `n`
//! nodes answering logins, a guesser spreading over them gets `n` times
//! the attempts.

use moka::sync::Cache;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Limits of login throttling.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Failures per account before attempts are delayed (0: accounts are
    /// not throttled).
    pub free_per_account: u32,
    /// Failures per source address before attempts are delayed (0:
    /// addresses are not throttled).
    pub free_per_address: u32,
    /// Failures older than this are forgotten.
    pub window: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_per_account: 5,
            free_per_address: 50,
            window: Duration::from_secs(15 * 60),
            max_delay: Duration::from_secs(5 * 60),
        }
    }
}

/// Most accounts and addresses tracked (each).
const CAPACITY: u64 = 100_000;
/// Longest account name kept as a key (longer ones are cut).
const MAX_KEY: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// What a throttle refused: who, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Throttled for the account (else for the address).
    pub account: bool,
    /// How long until the next attempt is taken.
    pub wait: Duration,
}

/// The failure counts of one node.
pub struct LoginThrottle {
    cfg: ThrottleConfig,
    accounts: Cache<String, Failures>,
    addresses: Cache<IpAddr, Failures>,
}

/// The address whose failures count together: IPv4 as is, IPv6 by /64
/// (one host usually holds a whole /64).
fn address_key(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => a,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn account_key(domain: &str, user: &str) -> String {
    let mut k = String::with_capacity(domain.len() + user.len() + 1);
    k.extend(domain.chars().take(MAX_KEY / 2));
    k.push('\0');
    k.extend(user.chars().take(MAX_KEY / 2));
    k
}

impl LoginThrottle {
    /// Returns a throttle with no failures recorded.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            accounts: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(cfg.window)
                .build(),
            addresses: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(cfg.window)
                .build(),
        }
    }

    /// The delay a key with `f` failures imposes after its last one, if
    /// any is left at `now`.
    fn wait(&self, f: Option<Failures>, free: u32, now: Instant) -> Option<Duration> {
        let f = f?;
        let since = now.saturating_duration_since(f.last);
        if free == 0 || f.count < free || since >= self.cfg.window {
            return None;
        }
        let doublings = (f.count - free).min(30);
        let delay = Duration::from_secs(1u64 << doublings).min(self.cfg.max_delay);
        delay.checked_sub(since).filter(|w| !w.is_zero())
    }

    /// Whether an attempt for `domain`/`user` from `peer` may be checked
    /// at `now`; else how long it must wait (the longer of the account's
    /// and the address's delays).
    pub fn check(
        &self,
        domain: &str,
        user: &str,
        peer: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Throttled> {
        let account = self
            .wait(
                self.accounts.get(&account_key(domain, user)),
                self.cfg.free_per_account,
                now,
            )
            .map(|wait| Throttled {
                account: true,
                wait,
            });
        let address = peer
            .and_then(|a| {
                self.wait(
                    self.addresses.get(&address_key(a)),
                    self.cfg.free_per_address,
                    now,
                )
            })
            .map(|wait| Throttled {
                account: false,
                wait,
            });
        match (account, address) {
            (None, None) => Ok(()),
            (Some(t), None) | (None, Some(t)) => Err(t),
            (Some(a), Some(b)) => Err(if b.wait > a.wait { b } else { a }),
        }
    }

    fn count(&self, old: Option<Failures>, now: Instant) -> Failures {
        match old {
            Some(f) if now.saturating_duration_since(f.last) < self.cfg.window => Failures {
                count: f.count.saturating_add(1),
                last: now,
            },
            _ => Failures {
                count: 1,
                last: now,
            },
        }
    }

    /// Records a failed attempt at `now`.
    pub fn failed(&self, domain: &str, user: &str, peer: Option<IpAddr>, now: Instant) {
        if self.cfg.free_per_account > 0 {
            let k = account_key(domain, user);
            let f = self.count(self.accounts.get(&k), now);
            self.accounts.insert(k, f);
        }
        if self.cfg.free_per_address > 0
            && let Some(a) = peer
        {
            let k = address_key(a);
            let f = self.count(self.addresses.get(&k), now);
            self.addresses.insert(k, f);
        }
    }

    /// Clears an account's failures after a successful login.
    pub fn succeeded(&self, domain: &str, user: &str) {
        self.accounts.invalidate(&account_key(domain, user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            free_per_account: 3,
            free_per_address: 5,
            window: Duration::from_secs(600),
            max_delay: Duration::from_secs(8),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn an_account_is_free_for_its_first_failures_then_waits_doubling_delays() {
        let t = LoginThrottle::new(cfg());
        let t0 = Instant::now();
        // Only the account counts here (see the address test below).
        let peer = None;
        for i in 0..3 {
            assert_eq!(t.check("acme", "1001", peer, t0), Ok(()), "failure {i}");
            t.failed("acme", "1001", peer, t0);
        }
        // Three failures: the next attempt waits 1 s after the last.
        let wait = |at: Instant| t.check("acme", "1001", peer, at).map_err(|e| e.wait);
        assert_eq!(wait(t0), Err(Duration::from_secs(1)));
        assert_eq!(
            wait(t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(wait(t1), Ok(()));
        // Each further failure doubles the delay: 2, 4, 8, then at most 8.
        let mut at = t1;
        for secs in [2, 4, 8, 8] {
            t.failed("acme", "1001", peer, at);
            assert_eq!(wait(at), Err(Duration::from_secs(secs)));
            at += Duration::from_secs(secs);
            assert_eq!(wait(at), Ok(()));
        }
        // Another account is not affected; a success clears the count.
        assert_eq!(t.check("acme", "1002", peer, at), Ok(()));
        t.failed("acme", "1001", peer, at);
        assert!(wait(at).is_err());
        t.succeeded("acme", "1001");
        assert_eq!(wait(at), Ok(()));
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let t = LoginThrottle::new(cfg());
        let t0 = Instant::now();
        for _ in 0..6 {
            t.failed("acme", "1001", None, t0);
        }
        assert!(t.check("acme", "1001", None, t0).is_err());
        let later = t0 + Duration::from_secs(600);
        assert_eq!(t.check("acme", "1001", None, later), Ok(()));
        // Counting starts over: the next failure is the first.
        t.failed("acme", "1001", None, later);
        assert_eq!(t.check("acme", "1001", None, later), Ok(()));
    }

    #[test]
    fn an_address_guessing_many_accounts_is_throttled_and_ipv6_counts_by_64() {
        let t = LoginThrottle::new(cfg());
        let t0 = Instant::now();
        for i in 0..5 {
            let peer = ip(&format!("2001:db8:1:2::{i}"));
            t.failed("acme", &format!("u{i}"), peer, t0);
        }
        // A fresh account from the same /64 waits; the address is why.
        let r = t.check("acme", "fresh", ip("2001:db8:1:2::99"), t0);
        assert_eq!(
            r,
            Err(Throttled {
                account: false,
                wait: Duration::from_secs(1)
            })
        );
        // Another /64, and IPv4, are not affected.
        assert_eq!(t.check("acme", "fresh", ip("2001:db8:1:3::1"), t0), Ok(()));
        assert_eq!(t.check("acme", "fresh", ip("192.0.2.1"), t0), Ok(()));
        // A success does not clear the address.
        t.succeeded("acme", "u0");
        assert!(t.check("acme", "fresh", ip("2001:db8:1:2::5"), t0).is_err());
    }

    #[test]
    fn zero_turns_a_kind_of_throttling_off_and_long_names_are_cut() {
        let t = LoginThrottle::new(ThrottleConfig {
            free_per_account: 0,
            free_per_address: 0,
            ..cfg()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            t.failed("acme", "1001", ip("192.0.2.1"), t0);
        }
        assert_eq!(t.check("acme", "1001", ip("192.0.2.1"), t0), Ok(()));
        let long = "x".repeat(10_000);
        assert!(account_key(&long, &long).len() <= MAX_KEY + 1);
    }
}
