//! Arbitrary bytes read as a stream of `AgentToController` frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ovl_common::proto::AgentToController;

fuzz_target!(|data: &[u8]| {
    ovl_testkit::frames::check::<AgentToController>(data);
});
