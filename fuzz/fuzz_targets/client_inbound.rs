//! The client's inbound path: MLS decoding and processing against a real group, and
//! decrypted content applied to a store.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    muster_engine::fuzzing::inbound(data);
});
