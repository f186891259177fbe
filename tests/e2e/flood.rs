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
const TIMED_SENDS: usize = 60;

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

/// Runs `connections` anonymous connections, each sending `request` as fast as the relay
/// answers, reconnecting after a short pause when it is turned away, until `stop`.
fn flood(
    addr: String,
    fingerprint: String,
    request: Request,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
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
                let (request, stop, sent) = (request.clone(), stop.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
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
                        while !stop.load(Ordering::Relaxed) {
                            sent.fetch_add(1, Ordering::Relaxed);
                            if let Err(muster_net::NetError::Connection(_)) =
                                conn.request(&request).await
                            {
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
    let mut normal_times = session.timed_sends(&gid, TIMED_SENDS);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = flood(
        org.relay.addr.clone(),
        org.relay.fingerprint.clone(),
        junk_enrolment("any organisation"),
        stop.clone(),
        sent.clone(),
    );
    muster_e2e::wait_until(Duration::from_secs(30), "the flood to start", || {
        sent.load(Ordering::Relaxed) >= FLOOD_CONNECTIONS as u64
    });
    let during = median(session.timed_sends(&gid, TIMED_SENDS));
    let flood_requests = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    // Normal is measured before and after the flood, on the same connection.
    normal_times.extend(session.timed_sends(&gid, TIMED_SENDS));
    let normal = median(normal_times);
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
