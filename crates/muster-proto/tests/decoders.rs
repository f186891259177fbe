//! Every decoder a network peer can reach: arbitrary bytes never panic, and valid
//! values survive a round trip.

use muster_proto::{decode, encode, Certificate, GroupPolicy, InviteCode, Push, Request, Response};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode::<Request>(&bytes);
    }

    #[test]
    fn response_and_push_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode::<Response>(&bytes);
        let _ = decode::<Push>(&bytes);
    }

    #[test]
    fn certificate_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Certificate::from_bytes(&bytes);
    }

    #[test]
    fn invite_decoder_never_panics(text in ".{0,600}") {
        let _ = InviteCode::decode(&text);
        let _ = InviteCode::decode(&format!("MUSTER1-{text}"));
    }

    #[test]
    fn policy_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = GroupPolicy::from_extension(Some(&bytes));
    }

    #[test]
    fn send_requests_round_trip(
        group_id in proptest::collection::vec(any::<u8>(), 0..64),
        message in proptest::collection::vec(any::<u8>(), 0..2048),
        client_id in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let request = Request::Send { group_id, message, client_id };
        prop_assert_eq!(decode::<Request>(&encode(&request).unwrap()).unwrap(), request);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics(
        message in proptest::collection::vec(any::<u8>(), 1..512),
        cut in 0usize..600,
    ) {
        let bytes = encode(&Request::Send { group_id: vec![1], message, client_id: vec![2] }).unwrap();
        let cut = cut.min(bytes.len().saturating_sub(1));
        prop_assert!(decode::<Request>(&bytes[..cut]).is_err());
    }
}
