//! Per-device rate limits: token buckets refilled with time, one for every request and a
//! stricter one for requests that store something (messages, commits, proposals, blob
//! chunks). Time is passed in, so the limits are tested without waiting.

use std::collections::HashMap;
use std::time::Instant;

/// How fast one device may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    pub requests_per_sec: f64,
    pub request_burst: f64,
    pub posts_per_sec: f64,
    pub post_burst: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            requests_per_sec: 200.0,
            request_burst: 2000.0,
            posts_per_sec: 50.0,
            post_burst: 500.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    pub(crate) last: Instant,
}

impl Bucket {
    pub(crate) fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Refills the bucket for the time passed, then takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }
}

/// Which limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests,
    Posts,
}

/// The buckets of every device seen.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    pub(crate) limits: RateLimits,
    buckets: HashMap<String, (Bucket, Bucket)>,
}

impl Limiter {
    /// Takes a token for one request (and a post token when it stores something).
    pub(crate) fn admit(&mut self, device: &str, posts: bool, now: Instant) -> Result<(), Limited> {
        let limits = self.limits;
        let (requests, stored) = self.buckets.entry(device.to_string()).or_insert((
            Bucket::full(limits.request_burst, now),
            Bucket::full(limits.post_burst, now),
        ));
        if !requests.take(now, limits.requests_per_sec, limits.request_burst) {
            return Err(Limited::Requests);
        }
        if posts && !stored.take(now, limits.posts_per_sec, limits.post_burst) {
            return Err(Limited::Posts);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_are_allowed_then_the_rate_holds() {
        let mut l = Limiter {
            limits: RateLimits {
                requests_per_sec: 100.0,
                request_burst: 100.0,
                posts_per_sec: 2.0,
                post_burst: 3.0,
            },
            ..Default::default()
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.admit("d", true, t0), Ok(()));
        }
        assert_eq!(l.admit("d", true, t0), Err(Limited::Posts));
        assert_eq!(l.admit("d", false, t0), Ok(()), "reading still works");
        assert_eq!(l.admit("other", true, t0), Ok(()), "devices are separate");
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            l.admit("d", true, later),
            Ok(()),
            "one token back after 0.5 s"
        );
        assert_eq!(l.admit("d", true, later), Err(Limited::Posts));
    }
}
