//! What the relay tells devices besides "deliveries wait": a revocation is a change the
//! revoked device's fellow members must act on (a whole sync), not a delivery to fetch.

use super::*;

#[test]
fn a_revocation_tells_the_other_devices_something_changed_and_cuts_the_revoked_off() {
    let mut w = World::new();
    let bob = w.enrol("bob");
    let carol = w.enrol("carol");
    let _group = w.group_with(&[&bob, &carol]);
    let revocation = w.root.sign_revocation(revoking(&w, "carol", &carol));
    let outcome = w
        .relay
        .handle(&w.admin.session, Request::Revoke { revocation });
    assert!(matches!(outcome.response, Response::Ok), "{outcome:?}");
    assert!(outcome.wake.is_empty(), "nothing to fetch: {outcome:?}");
    assert!(outcome.changed.contains(&bob.session.device_id));
    assert!(!outcome.changed.contains(&carol.session.device_id));
    assert!(outcome.disconnect.contains(&carol.session.device_id));
}
