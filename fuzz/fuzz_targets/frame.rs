//! The frame decoder: length prefixes, then every message type both ends decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_net::framing::split_frame;
use muster_proto::{decode, Push, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((body, after))) = split_frame(rest) {
        let _ = decode::<Request>(body);
        let _ = decode::<Response>(body);
        let _ = decode::<Push>(body);
        rest = after;
    }
});
