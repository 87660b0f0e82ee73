//! Arbitrary bytes read as a stream of `ApiRequest` frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ovl_common::proto::ApiRequest;

fuzz_target!(|data: &[u8]| {
    ovl_testkit::frames::check::<ApiRequest>(data);
});
