//! Who may use the UI: only this machine's browser tab, holding the session the printed
//! link gave it. The link carries a one-time token in its fragment (never sent to a
//! server, never in a Referer); the page trades it for a session it keeps in the tab's
//! sessionStorage and sends as a bearer token. No cookie: browsers share cookies between
//! all ports of a host, so another local user's server on 127.0.0.1 could collect one.
//! Every request must name this server by a loopback Host (no DNS rebinding), and a
//! request from a page must come from this origin (no cross-site requests).

use ring::rand::{SecureRandom, SystemRandom};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What every response carries: nothing loads from anywhere but this server, and no page
/// may frame it.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cache-control", "no-store"),
];

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness available");
    hex::encode(bytes)
}

/// Compares secrets without leaking where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// How long a printed link can be opened: a link left in a terminal's scrollback or a
/// shell history stops working.
pub const LINK_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How many tabs may hold a session at once; the oldest is dropped beyond that.
const MAX_SESSIONS: usize = 16;

/// The UI server's secrets and the address it answers on.
pub struct Access {
    /// `host:port` as the link names it: the only Host and Origin served.
    authority: String,
    /// The newest link's one-time token and when it stops working; `None` once exchanged.
    token: Mutex<Option<(String, Instant)>>,
    /// One per traded link, newest last.
    sessions: Mutex<Vec<String>>,
}

impl Access {
    /// Fresh secrets for a server listening on `addr` (a loopback address).
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            authority: addr.to_string(),
            token: Mutex::new(None),
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// A new link to open, carrying a fresh one-time token in its fragment; any link
    /// printed before stops working.
    pub fn link(&self) -> String {
        let token = random_hex();
        *self.token.lock().expect("token lock") =
            Some((token.clone(), Instant::now() + LINK_LIFETIME));
        format!("http://{}/#token={token}", self.authority)
    }

    /// Whether the Host header names this server exactly as its link does (browsers
    /// leave out port 80).
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        host.is_some_and(|h| {
            h.eq_ignore_ascii_case(&self.authority)
                || self
                    .authority
                    .strip_suffix(":80")
                    .is_some_and(|bare| h.eq_ignore_ascii_case(bare))
        })
    }

    /// Whether a request's Origin is this server's own. Requests that change something
    /// must carry one; a page elsewhere (or a sandboxed one, "null") never passes.
    pub fn origin_allowed(&self, origin: Option<&str>, changes_state: bool) -> bool {
        match origin {
            None => !changes_state,
            Some(o) => o
                .strip_prefix("http://")
                .is_some_and(|host| self.host_allowed(Some(host))),
        }
    }

    /// Exchanges the link's token for a session of its own, once, before it runs out.
    pub fn exchange(&self, token: &str) -> Option<String> {
        self.exchange_at(token, Instant::now())
    }

    fn exchange_at(&self, token: &str, now: Instant) -> Option<String> {
        let mut held = self.token.lock().expect("token lock");
        match held.as_ref() {
            Some((t, until)) if now < *until && same_secret(t, token) => {
                *held = None;
                let session = random_hex();
                let mut sessions = self.sessions.lock().expect("sessions lock");
                if sessions.len() == MAX_SESSIONS {
                    sessions.remove(0);
                }
                sessions.push(session.clone());
                Some(session)
            }
            _ => None,
        }
    }

    /// Whether an Authorization header carries a session as a bearer token.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let sessions = self.sessions.lock().expect("sessions lock");
        // Every session is compared, so the time taken says nothing about which matched.
        sessions
            .iter()
            .fold(false, |found, s| same_secret(value, s) | found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn only_loopback_names_of_this_port_are_served() {
        let access = Access::new(local(4100));
        assert!(access.host_allowed(Some("127.0.0.1:4100")));
        for host in [
            None,
            Some("localhost:4100"),
            Some("[::1]:4100"),
            Some("127.0.0.1:4101"),
            Some("evil.example:4100"),
            Some("127.0.0.1"),
        ] {
            assert!(!access.host_allowed(host), "{host:?}");
        }
    }

    #[test]
    fn changes_come_only_from_this_origin() {
        let access = Access::new(local(4100));
        assert!(access.origin_allowed(Some("http://127.0.0.1:4100"), true));
        assert!(access.origin_allowed(None, false));
        assert!(!access.origin_allowed(None, true));
        for origin in [
            "null",
            "http://evil.example",
            "https://127.0.0.1:4100",
            "http://127.0.0.1:4100.evil",
        ] {
            assert!(!access.origin_allowed(Some(origin), false), "{origin}");
        }
    }

    #[test]
    fn a_link_works_once_only_while_fresh_and_only_the_newest() {
        let access = Access::new(local(4100));
        let token = |link: String| link.rsplit_once("/#token=").unwrap().1.to_string();
        let old = token(access.link());
        let newest = token(access.link());
        assert_eq!(access.exchange(&old), None, "a newer link replaces it");
        let late = Instant::now() + LINK_LIFETIME + Duration::from_secs(1);
        assert_eq!(access.exchange_at(&newest, late), None, "it ran out");
        let fresh = token(access.link());
        assert!(access.exchange(&fresh).is_some());
    }

    #[test]
    fn the_token_is_good_once_and_the_session_travels_only_as_a_bearer() {
        let access = Access::new(local(4100));
        let link = access.link();
        let token = link.rsplit_once("/#token=").unwrap().1.to_string();
        assert_eq!(access.exchange("wrong"), None);
        let session = access.exchange(&token).expect("first exchange");
        assert_eq!(access.exchange(&token), None, "a link works once");
        let other_tab = access.link().rsplit_once("/#token=").unwrap().1.to_string();
        let other = access.exchange(&other_tab).expect("a second tab");
        assert_ne!(other, session, "each tab has its own session");
        assert!(access.authorized(Some(&format!("Bearer {other}"))));
        assert!(access.authorized(Some(&format!("Bearer {session}"))));
        assert!(!access.authorized(Some(&format!("Bearer x{session}"))));
        assert!(!access.authorized(Some(&session)));
        assert!(!access.authorized(None));
    }
}
