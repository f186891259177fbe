//! Keeping anonymous peers from crowding out members: a cap on connections that have not
//! authenticated yet, per source address and in total, and a rate for the requests such
//! connections make (hello, proof, enrolment, health), per address and in total. An
//! address that used up its rate is refused new connections until it has earned a
//! request again, before any TLS handshake is spent on it. Time is passed in, so the
//! limits are tested without waiting.

use crate::limits::Bucket;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// How much unauthenticated work the relay accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnonymousLimits {
    /// Connections not yet authenticated from one source address.
    pub connections_per_address: usize,
    /// Connections not yet authenticated in all.
    pub connections_total: usize,
    /// Anonymous requests per second from one address (bursts of twice as many).
    pub requests_per_address: f64,
    /// Anonymous requests per second in all (bursts of twice as many).
    pub requests_total: f64,
}

impl Default for AnonymousLimits {
    fn default() -> Self {
        Self {
            connections_per_address: 32,
            connections_total: 1024,
            requests_per_address: 100.0,
            requests_total: 1000.0,
        }
    }
}

/// Counts of unauthenticated connections and anonymous request buckets.
#[derive(Debug)]
pub struct Admission {
    limits: AnonymousLimits,
    open: HashMap<IpAddr, usize>,
    open_total: usize,
    buckets: HashMap<IpAddr, Bucket>,
    total: Bucket,
}

/// Addresses remembered at most; full buckets are forgotten beyond this.
const MAX_ADDRESSES: usize = 10_000;

/// Where a peer comes from, for the limits: its IPv4 address, or the /64 network of its
/// IPv6 address (one site is handed a whole /64).
fn source(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

impl Admission {
    pub fn new(limits: AnonymousLimits, now: Instant) -> Self {
        Self {
            limits,
            open: HashMap::new(),
            open_total: 0,
            buckets: HashMap::new(),
            total: Bucket::full(limits.requests_total * 2.0, now),
        }
    }

    fn bucket(&mut self, address: IpAddr, now: Instant) -> &mut Bucket {
        let burst = self.limits.requests_per_address * 2.0;
        let rate = self.limits.requests_per_address;
        if self.buckets.len() >= MAX_ADDRESSES && !self.buckets.contains_key(&address) {
            self.buckets.retain(|_, b| {
                b.refill(now, rate, burst);
                b.tokens < burst
            });
        }
        self.buckets
            .entry(address)
            .or_insert_with(|| Bucket::full(burst, now))
    }

    /// Whether a new connection from `address` may start its handshake; if so it counts
    /// as unauthenticated until [`Self::release`].
    pub fn admit_connection(&mut self, address: IpAddr, now: Instant) -> bool {
        let address = source(address);
        let (rate, burst) = (
            self.limits.requests_per_address,
            self.limits.requests_per_address * 2.0,
        );
        let bucket = self.bucket(address, now);
        bucket.refill(now, rate, burst);
        if bucket.tokens < 1.0 {
            return false;
        }
        let open = self.open.get(&address).copied().unwrap_or(0);
        if open >= self.limits.connections_per_address
            || self.open_total >= self.limits.connections_total
        {
            return false;
        }
        // Opening a connection costs the relay a handshake: it is paid for like a request,
        // so connections opened and dropped at once still run out of rate.
        self.bucket(address, now).tokens -= 1.0;
        self.open.insert(address, open + 1);
        self.open_total += 1;
        true
    }

    /// The connection from `address` authenticated or closed.
    pub fn release(&mut self, address: IpAddr) {
        let address = source(address);
        if let Some(open) = self.open.get_mut(&address) {
            *open -= 1;
            if *open == 0 {
                self.open.remove(&address);
            }
            self.open_total = self.open_total.saturating_sub(1);
        }
    }

    /// Takes one anonymous request's worth from `address`'s rate and, unless it is a
    /// device logging in (`logs_in`: hello and proof), from the total, so that strangers
    /// spending the total do not lock members out.
    pub fn admit_request(&mut self, address: IpAddr, logs_in: bool, now: Instant) -> bool {
        let address = source(address);
        let (rate, burst) = (
            self.limits.requests_per_address,
            self.limits.requests_per_address * 2.0,
        );
        if !self.bucket(address, now).take(now, rate, burst) {
            return false;
        }
        if logs_in {
            return true;
        }
        let total_rate = self.limits.requests_total;
        self.total.take(now, total_rate, total_rate * 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> AnonymousLimits {
        AnonymousLimits {
            connections_per_address: 2,
            connections_total: 3,
            requests_per_address: 5.0,
            requests_total: 8.0,
        }
    }

    #[test]
    fn unauthenticated_connections_are_capped_per_address_and_in_total() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(), t0);
        let (x, y, z) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        assert!(a.admit_connection(x, t0));
        assert!(a.admit_connection(x, t0));
        assert!(!a.admit_connection(x, t0), "two per address");
        assert!(a.admit_connection(y, t0));
        assert!(!a.admit_connection(z, t0), "three in all");
        a.release(x);
        assert!(a.admit_connection(z, t0));
    }

    #[test]
    fn an_address_that_spent_its_rate_is_refused_until_it_earns_more() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(), t0);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..10 {
            assert!(a.admit_request(x, false, t0), "a burst of twice the rate");
        }
        assert!(!a.admit_request(x, false, t0));
        assert!(
            !a.admit_connection(x, t0),
            "no new connection while it is spent"
        );
        assert!(a.admit_request(y, false, t0), "other addresses go on");
        let later = t0 + Duration::from_millis(400);
        assert!(a.admit_connection(x, later));
        assert!(a.admit_request(x, false, later));
        // The total caps all addresses together (8/s, bursts of 16; 11 taken so far).
        let z: IpAddr = "10.0.0.3".parse().unwrap();
        let taken = (0..10).filter(|_| a.admit_request(z, false, later)).count();
        assert!(taken < 10, "the total rate applies to everyone");
    }

    #[test]
    fn connections_opened_and_dropped_at_once_spend_the_rate() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(), t0);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(a.admit_connection(x, t0), "a burst of twice the rate");
            a.release(x);
        }
        assert!(!a.admit_connection(x, t0));
        assert!(a.admit_connection(x, t0 + std::time::Duration::from_secs(1)));
    }

    #[test]
    fn logins_are_held_to_their_address_only_and_an_ipv6_site_counts_once() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(), t0);
        for i in 10..14 {
            let stranger: IpAddr = format!("10.0.1.{i}").parse().unwrap();
            while a.admit_request(stranger, false, t0) {}
        }
        let member: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(!a.admit_request(member, false, t0), "the total is spent");
        assert!(
            a.admit_request(member, true, t0),
            "a device logging in still gets in"
        );
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let second: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(a.admit_connection(first, t0));
        assert!(a.admit_connection(second, t0));
        assert!(!a.admit_connection(second, t0), "the same /64");
        a.release(first);
        assert!(a.admit_connection(elsewhere, t0));
    }
}
