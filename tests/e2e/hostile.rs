//! Hostile input: replayed state, bad local input and malformed frames.

use muster_e2e::{Device, Org};
use muster_net::{read_frame, write_frame, RelayConnection};
use muster_proto::{decode, ErrorCode, Request, Response};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn removed_member_replaying_old_state_is_refused() {
    let org = Org::new("nonmember");
    let bob = org.enrol("bob");
    org.admin
        .ok(&["group", "create", "ops", "--members", "bob"]);
    bob.ok(&["sync"]);
    // Keep a copy of bob's device as it was while still a member.
    // (The copy opens with bob's key, as a copy of his device would.)
    let stale = Device::new(&org.dir, "bob-stale")
        .with_env("MUSTER_KEY_FILE", bob.env_var("MUSTER_KEY_FILE").unwrap());
    copy_dir(&bob.home, &stale.home);
    org.admin.ok(&["group", "remove", "ops", "bob"]);
    let err = stale.fails(&["send", "ops", "let me in"]);
    assert!(err.contains("not a member"), "{err}");
    org.admin.ok(&["sync"]);
    assert!(org.admin.texts("ops").is_empty());
    // The relay keeps serving members.
    org.admin.ok(&["send", "ops", "still fine"]);
}

#[test]
fn bad_local_input_gets_clear_errors() {
    let org = Org::new("badinput");
    let err = org.admin.fails(&["send", "nosuchgroup", "hi"]);
    assert!(err.contains("no group named"), "{err}");
    org.admin.ok(&["group", "create", "ops"]);
    let huge = "x".repeat(70 * 1024);
    let err = org.admin.fails(&["send", "ops", &huge]);
    assert!(err.contains("limit"), "{err}");
    let err = org.admin.fails(&["group", "create", "ops"]);
    assert!(err.contains("already have a group"), "{err}");
    let err = org.admin.fails(&["group", "add", "ops", "nobody"]);
    assert!(err.contains("no enrolled device"), "{err}");
    let err = Device::new(&org.dir, "x").fails(&["join", "MUSTER1-garbage", "--display-name", "X"]);
    assert!(err.contains("invite code"), "{err}");
}

#[test]
fn malformed_frames_are_refused_and_the_relay_keeps_serving() {
    let org = Org::new("frames");
    org.admin.ok(&["group", "create", "ops"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = RelayConnection::connect(&org.relay.addr, &org.relay.fingerprint)
            .await
            .unwrap();
        // Unauthenticated requests that need a device are refused.
        let err = conn
            .request(&Request::Fetch { limit: 10 })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("authenticate"), "{err}");
        // A bad challenge answer is refused.
        let err = conn
            .request(&Request::Prove {
                signature: vec![0; 64],
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("Hello"), "{err}");
        let _ = conn
            .request(&Request::Hello {
                device_key: vec![7; 32],
            })
            .await
            .unwrap();
        let err = conn
            .request(&Request::Prove {
                signature: vec![0; 64],
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        conn.close().await;
    });
    // Raw garbage and oversized frames on a fresh connection.
    rt.block_on(async {
        let conn = RelayConnection::connect(&org.relay.addr, &org.relay.fingerprint)
            .await
            .unwrap();
        let quic = conn.raw();
        let (mut send, mut recv) = quic.open_bi().await.unwrap();
        write_frame(&mut send, &[0xff, 0xfe, 0x01, 0x02])
            .await
            .unwrap();
        let _ = send.finish();
        let frame = read_frame(&mut recv).await.unwrap().unwrap();
        match decode::<Response>(&frame).unwrap() {
            Response::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
            other => panic!("expected an error, got {other:?}"),
        }
        let (mut send, mut recv) = quic.open_bi().await.unwrap();
        send.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let _ = send.finish();
        let frame = read_frame(&mut recv).await.unwrap().unwrap();
        match decode::<Response>(&frame).unwrap() {
            Response::Error(e) => assert_eq!(e.code, ErrorCode::TooLarge),
            other => panic!("expected an error, got {other:?}"),
        }
        conn.close().await;
    });
    // Everyone else is unaffected.
    org.admin.ok(&["send", "ops", "after garbage"]);
    assert_eq!(org.admin.texts("ops"), ["after garbage"]);
}
