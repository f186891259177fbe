//! Anonymous peers flooding the relay before they authenticate: members do not notice.

use crate::rogue::Rogue;
use muster_e2e::{group_id, Org};
use muster_proto::{
    CodeSecret, EnrolmentRequest, ErrorCode, InvitePurpose, Profile, Request, RequestBody, Response,
};
use openmls::prelude::SignatureScheme;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLOOD_CONNECTIONS: usize = 200;
/// Sends timed in each round, with the flood paused and then running.
const SENDS_PER_ROUND: usize = 10;
/// Rounds alternate quiet and flooded sends, so load from tests running alongside
/// weighs on both figures alike.
const ROUNDS: usize = 6;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A correctly signed enrolment request for a code the relay never issued: as costly as
/// an anonymous request gets.
fn junk_enrolment(org_id: &str) -> Request {
    let secret = CodeSecret::generate();
    let device = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
    let body = RequestBody {
        org_id: org_id.into(),
        purpose: InvitePurpose::NewUser,
        user: "flood".into(),
        device_key: device.public().to_vec(),
        profile: Profile {
            display_name: "Flood".into(),
            ..Default::default()
        },
        code_key: secret.public_key(),
        requested_at: 0,
    };
    let request = EnrolmentRequest::new(body, &secret, |m| device.sign(m).unwrap());
    Request::Enrol { request }
}

/// Where the flood is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Paused,
    Running,
    Over,
}

/// The flood's phase, what it has under way and how many requests it sent.
struct FloodControl {
    phase: tokio::sync::watch::Sender<Phase>,
    /// Connection attempts and requests on their way to the relay right now.
    in_flight: AtomicU64,
    sent: AtomicU64,
    /// Requests the relay worked on (it answered them with anything but a refusal).
    served: AtomicU64,
}

impl FloodControl {
    fn new() -> Self {
        Self {
            phase: tokio::sync::watch::Sender::new(Phase::Paused),
            in_flight: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }
    }

    fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }
}

/// Gives the calling thread (and the threads it starts, which inherit it) the lowest CPU
/// priority: the flood's own TLS work stands for an attacker's machine, not this one, so
/// it should not take the cores the relay and the member share. What the relay spends on
/// the flood is still spent.
fn lowest_priority_for_this_thread() {
    let me = std::fs::read_link("/proc/thread-self").expect("Linux names the calling thread");
    let tid = me
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a thread id")
        .to_string();
    let status = std::process::Command::new("renice")
        .args(["-n", "19", "-p", &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run renice");
    assert!(status.success(), "renice the flooding thread");
}

/// Runs `connections` anonymous connections, each sending `request` as fast as the relay
/// answers, reconnecting after a short pause when it is turned away, until stopped.
fn flood(
    addr: String,
    fingerprint: String,
    request: Request,
    control: Arc<FloodControl>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        lowest_priority_for_this_thread();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let mut tasks = Vec::new();
            for _ in 0..FLOOD_CONNECTIONS {
                let (endpoint, addr, fingerprint) =
                    (endpoint.clone(), addr.clone(), fingerprint.clone());
                let (request, control) = (request.clone(), control.clone());
                tasks.push(tokio::spawn(async move {
                    let mut phase = control.phase.subscribe();
                    // Waits while paused; whether the flood goes on.
                    let mut goes_on = async move || {
                        let now = phase.wait_for(|p| *p != Phase::Paused).await;
                        now.is_ok_and(|p| *p == Phase::Running)
                    };
                    while goes_on().await {
                        control.in_flight.fetch_add(1, Ordering::SeqCst);
                        let conn = muster_net::RelayConnection::connect_via(
                            endpoint.clone(),
                            &addr,
                            &fingerprint,
                        )
                        .await;
                        control.in_flight.fetch_sub(1, Ordering::SeqCst);
                        let Ok(conn) = conn else {
                            // Turned away: try again soon, as a flooding peer would.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        };
                        while goes_on().await {
                            control.in_flight.fetch_add(1, Ordering::SeqCst);
                            control.sent.fetch_add(1, Ordering::Relaxed);
                            let answer = conn.request(&request).await;
                            control.in_flight.fetch_sub(1, Ordering::SeqCst);
                            match answer {
                                Err(muster_net::NetError::Refused(e))
                                    if e.code == ErrorCode::RateLimited => {}
                                Ok(Response::Error(e)) if e.code == ErrorCode::RateLimited => {}
                                // Worked on: an answer, or a refusal for what it said
                                // (the code was never issued).
                                Ok(_) | Err(muster_net::NetError::Refused(_)) => {
                                    control.served.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(muster_net::NetError::Connection(_)) => break,
                                Err(_) => {}
                            }
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
    })
}

/// The relay's default limit on anonymous requests from one address: per second, and in
/// one burst.
const ANONYMOUS_PER_SEC: f64 = 100.0;
const ANONYMOUS_BURST: f64 = 2.0 * ANONYMOUS_PER_SEC;

/// What shows that the relay holds anonymous peers back is how much of the flood it
/// worked on: no more than its rate allows over the flood's life. The member's send
/// latency, quiet against flooded, is printed for the record; on two shared cores it is
/// too noisy to assert on closely (it measured 1.04-2.1x with the limits and 2.2-3.0x
/// without), so it is only held to stay usable.
#[test]
fn an_enrolment_flood_from_200_connections_is_held_to_the_anonymous_rate_and_members_keep_sending()
{
    let org = Org::new("flood");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    let gid = group_id(&org.admin, "ops");
    // Bob's device is connected before the flood starts (new connections from the
    // flooding address are turned away while it floods).
    let rogue = Rogue::open(&bob);
    let mut session = rogue.session();
    session.timed_sends(&gid, 5); // warm up

    let control = Arc::new(FloodControl::new());
    let flood_began = Instant::now();
    let flooder = flood(
        org.relay.addr.clone(),
        org.relay.fingerprint.clone(),
        junk_enrolment("any organisation"),
        control.clone(),
    );
    let (mut normal_times, mut flood_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        control.set(Phase::Paused);
        muster_e2e::wait_until(Duration::from_secs(30), "the flood to pause", || {
            control.in_flight.load(Ordering::SeqCst) == 0
        });
        normal_times.extend(session.timed_sends(&gid, SENDS_PER_ROUND));
        let before = control.sent.load(Ordering::Relaxed);
        control.set(Phase::Running);
        muster_e2e::wait_until(Duration::from_secs(30), "the flood to run", || {
            control.sent.load(Ordering::Relaxed) >= before + FLOOD_CONNECTIONS as u64
        });
        flood_times.extend(session.timed_sends(&gid, SENDS_PER_ROUND));
    }
    control.set(Phase::Over);
    flooder.join().unwrap();
    let flood_lasted = flood_began.elapsed();
    let (tried, served) = (
        control.sent.load(Ordering::Relaxed),
        control.served.load(Ordering::Relaxed),
    );
    let (normal, during) = (median(normal_times), median(flood_times));
    drop(session);
    drop(rogue);
    eprintln!(
        "the relay worked on {served} of {tried} anonymous requests in {flood_lasted:?}; \
         median send latency: {normal:?} normally, {during:?} during the flood"
    );
    let allowed = ANONYMOUS_PER_SEC * flood_lasted.as_secs_f64() + ANONYMOUS_BURST;
    assert!(
        served as f64 <= allowed,
        "the relay worked on {served} anonymous requests from one address in {flood_lasted:?}, \
         more than its limit allows ({allowed:.0})"
    );
    assert!(
        served < tried,
        "the flood ({tried} requests) never met the limit, so this test shows nothing"
    );
    assert!(
        during <= normal * 10 + Duration::from_millis(200),
        "a member's send took {during:?} during the flood, {normal:?} without"
    );
    // The relay keeps serving members.
    org.admin.ok(&["send", "ops", "after the flood"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("ops").contains(&"after the flood".to_string()));
}
