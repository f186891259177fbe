//! A handshake that stalls is tried again on a fresh connection within the same deadline.

use muster_net::{RelayConnection, RelayIdentity};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The destination connection id of a QUIC long-header packet.
fn long_header_dcid(packet: &[u8]) -> Option<&[u8]> {
    if packet.first()? & 0x80 == 0 {
        return None;
    }
    let len = *packet.get(5)? as usize;
    packet.get(6..6 + len)
}

/// Forwards datagrams between one client and `server`, swallowing every packet the
/// client sends for its first connection (the connection id of its first Initial), so that
/// handshake never gets an answer. Returns the address to connect to and the count of
/// swallowed packets.
fn forwarder_losing_the_first_handshake(
    server: std::net::SocketAddr,
) -> (String, Arc<AtomicUsize>) {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(server).unwrap();
    let addr = front.local_addr().unwrap().to_string();
    let swallowed = Arc::new(AtomicUsize::new(0));
    let client = Arc::new(std::sync::Mutex::new(None));
    {
        let (front, back) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let (client, swallowed) = (client.clone(), swallowed.clone());
        std::thread::spawn(move || {
            let mut first_dcid: Option<Vec<u8>> = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                *client.lock().unwrap() = Some(from);
                let dcid = long_header_dcid(&buf[..n]).map(<[u8]>::to_vec);
                if first_dcid.is_none() {
                    first_dcid = dcid.clone();
                }
                if dcid.is_some() && dcid == first_dcid {
                    swallowed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = back.send(&buf[..n]);
            }
        });
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf) {
            if let Some(to) = *client.lock().unwrap() {
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    (addr, swallowed)
}

/// A relay endpoint with a fresh identity in a scratch directory named `label`,
/// accepting every connection; returns its identity and address.
fn relay(label: &str) -> (RelayIdentity, std::net::SocketAddr) {
    let dir = std::env::temp_dir().join(format!("muster-net-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let identity = RelayIdentity::load_or_create(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let server = quinn::Endpoint::server(
        identity.server_config().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    (identity, addr)
}

#[tokio::test]
async fn a_handshake_that_gets_no_answer_is_tried_again_and_connects() {
    let (identity, server_addr) = relay("stall");
    let (addr, swallowed) = forwarder_losing_the_first_handshake(server_addr);

    let conn = RelayConnection::connect(&addr, &identity.fingerprint()).await;

    assert!(
        conn.is_ok(),
        "the second attempt connects: {:?}",
        conn.err()
    );
    assert!(
        swallowed.load(Ordering::Relaxed) > 0,
        "the first handshake was lost"
    );
}

#[tokio::test]
async fn the_second_attempt_still_refuses_a_relay_with_another_certificate() {
    let (pinned, _) = relay("pinned");
    let (_, impostor_addr) = relay("impostor");
    let (addr, _) = forwarder_losing_the_first_handshake(impostor_addr);

    let conn = RelayConnection::connect(&addr, &pinned.fingerprint()).await;

    assert!(
        matches!(conn, Err(muster_net::NetError::WrongFingerprint { .. })),
        "the impostor is refused: {:?}",
        conn.err()
    );
}
