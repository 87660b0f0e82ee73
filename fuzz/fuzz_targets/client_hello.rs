//! Arbitrary bytes read as a stream of `ClientHello` frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ovl_common::proto::ClientHello;

fuzz_target!(|data: &[u8]| {
    ovl_testkit::frames::check::<ClientHello>(data);
});
