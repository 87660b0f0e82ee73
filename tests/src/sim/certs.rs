//! Certificates for simulated hosts, issued with the library ([`ovl_controller::pki::Ca`]):
//! fast enough for hundreds of hosts, and able to make expired or not-yet-valid ones.

use std::path::Path;

use ovl_common::identity::Identity;
use ovl_common::tls::Bundle;
use ovl_common::HostName;
use ovl_controller::pki::{Ca, Validity};

/// A host name that is known to be valid.
pub fn host_name(name: &str) -> HostName {
    HostName::new(name).unwrap_or_else(|e| panic!("'{name}' is not a host name: {e}"))
}

/// A validity window relative to now: from `from` to `to` (negative durations lie in the past).
pub fn validity(from: time::Duration, to: time::Duration) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now + from,
        not_after: now + to,
    }
}

/// The validity `ovl-controller issue` gives by default: from an hour ago for 825 days.
pub fn valid_now() -> Validity {
    Validity::from_now(ovl_controller::pki::LEAF_VALIDITY)
}

/// Issues a certificate for `identity` with the cluster CA, writes its bundle to `out` and
/// loads it back.
pub fn issue_bundle(ca: &Ca, identity: &Identity, validity: Validity, out: &Path) -> Bundle {
    ca.write_bundle(identity, &[], validity, out)
        .unwrap_or_else(|e| panic!("issuing a certificate for {identity}: {e}"));
    Bundle::load(out).unwrap_or_else(|e| panic!("loading the bundle {}: {e}", out.display()))
}
