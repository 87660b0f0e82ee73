//! Arbitrary bytes read as a stream of `ControllerToAgent` frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ovl_common::proto::ControllerToAgent;

fuzz_target!(|data: &[u8]| {
    ovl_testkit::frames::check::<ControllerToAgent>(data);
});
