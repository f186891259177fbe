//! Anonymous peers flooding the relay before they authenticate: members do not notice.

use crate::rogue::Rogue;
use muster_e2e::{group_id, Org};
use muster_proto::{CodeSecret, EnrolmentRequest, InvitePurpose, Profile, Request, RequestBody};
use openmls::prelude::SignatureScheme;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// Whether the flood runs, is paused or is over, and how many requests it sent.
#[derive(Default)]
struct FloodControl {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Requests on their way to the relay right now.
    in_flight: AtomicU64,
    sent: AtomicU64,
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
                    let paused = || async {
                        while control.paused.load(Ordering::Relaxed)
                            && !control.stop.load(Ordering::Relaxed)
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    while !control.stop.load(Ordering::Relaxed) {
                        paused().await;
                        let conn = muster_net::RelayConnection::connect_via(
                            endpoint.clone(),
                            &addr,
                            &fingerprint,
                        )
                        .await;
                        let Ok(conn) = conn else {
                            // Turned away: try again soon, as a flooding peer would.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        };
                        while !control.stop.load(Ordering::Relaxed) {
                            paused().await;
                            control.in_flight.fetch_add(1, Ordering::SeqCst);
                            control.sent.fetch_add(1, Ordering::Relaxed);
                            let answer = conn.request(&request).await;
                            control.in_flight.fetch_sub(1, Ordering::SeqCst);
                            if let Err(muster_net::NetError::Connection(_)) = answer {
                                break;
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

#[test]
fn an_enrolment_flood_from_200_connections_leaves_a_members_send_latency_within_twice_normal() {
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

    let control = Arc::new(FloodControl::default());
    control.paused.store(true, Ordering::Relaxed);
    let flooder = flood(
        org.relay.addr.clone(),
        org.relay.fingerprint.clone(),
        junk_enrolment("any organisation"),
        control.clone(),
    );
    let (mut normal_times, mut flood_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        control.paused.store(true, Ordering::Relaxed);
        muster_e2e::wait_until(Duration::from_secs(30), "the flood to pause", || {
            control.in_flight.load(Ordering::SeqCst) == 0
        });
        normal_times.extend(session.timed_sends(&gid, SENDS_PER_ROUND));
        let before = control.sent.load(Ordering::Relaxed);
        control.paused.store(false, Ordering::Relaxed);
        muster_e2e::wait_until(Duration::from_secs(30), "the flood to run", || {
            control.sent.load(Ordering::Relaxed) >= before + FLOOD_CONNECTIONS as u64
        });
        flood_times.extend(session.timed_sends(&gid, SENDS_PER_ROUND));
    }
    let flood_requests = control.sent.load(Ordering::Relaxed);
    control.stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let (normal, during) = (median(normal_times), median(flood_times));
    drop(session);
    drop(rogue);
    eprintln!(
        "median send latency: {normal:?} normally, {during:?} during a flood of {flood_requests} anonymous requests"
    );
    assert!(
        during <= normal * 2,
        "a member's send took {during:?} during the flood ({flood_requests} anonymous requests tried), {normal:?} without"
    );
    // The relay keeps serving members.
    org.admin.ok(&["send", "ops", "after the flood"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("ops").contains(&"after the flood".to_string()));
}
