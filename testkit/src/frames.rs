//! The property every frame decoder must have, for one message type: feeding arbitrary bytes
//! to `ovl_common::frame` never panics, never reads past the input, refuses a length only
//! above the bound, and whatever decodes is a message that encodes and decodes back to itself.
//!
//! The bytes are read as a stream of frames, the way the controller and the agents read a QUIC
//! stream: frame after frame until the input runs out or a frame is refused. The fuzz targets
//! call [`check`] on what libFuzzer generates; `tests/tests/reliability_input.rs` calls it on
//! every corpus file.

use std::fmt::Debug;

use ovl_common::frame::{decode_body, decode_frame, encode, FrameError, MAX_FRAME_LEN};
use ovl_common::proto::{ClientHello, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as back-to-back frames of `T`, and also as one bare frame body, checking
/// the property above; returns how many frames of the stream decoded before it ended or a
/// frame was refused. Panics (which libFuzzer reports as a crash) when the property does not
/// hold.
pub fn check<T>(data: &[u8]) -> usize
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let mut rest = data;
    let mut decoded = 0;
    loop {
        match decode_frame::<T>(rest) {
            Ok(Some((msg, used))) => {
                assert!(
                    (4..=rest.len()).contains(&used),
                    "a frame used {used} of {} bytes",
                    rest.len()
                );
                round_trip(&msg);
                decoded += 1;
                rest = &rest[used..];
            }
            Ok(None) => {
                // More bytes would be needed: the declared length is within the bound.
                if rest.len() >= 4 {
                    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    assert!(len <= MAX_FRAME_LEN && rest.len() < 4 + len);
                }
                break;
            }
            Err(FrameError::TooLarge { len, max }) => {
                assert!(
                    len > max,
                    "refused a {len}-byte frame under the {max}-byte bound"
                );
                break;
            }
            Err(_) => break,
        }
    }
    if let Ok(msg) = decode_body::<T>(data) {
        round_trip(&msg);
    }
    decoded
}

fn round_trip<T>(msg: &T)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let bytes = encode(msg).expect("a decoded message encodes again");
    let (back, used) = decode_frame::<T>(&bytes)
        .expect("a re-encoded message decodes")
        .expect("a re-encoded message is one whole frame");
    assert_eq!(used, bytes.len());
    assert_eq!(&back, msg, "a message changed through encode and decode");
}

/// Whether a hello frame would be accepted as a hello of this protocol version.
pub fn is_acceptable_hello(bytes: &[u8]) -> bool {
    matches!(decode_frame::<ClientHello>(bytes), Ok(Some((h, _))) if h.version == PROTOCOL_VERSION)
}

/// How many leading frames of `bytes` decode as `T` (the controller answers each of them).
pub fn leading_valid<T: DeserializeOwned>(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    let mut n = 0;
    while let Ok(Some((_, used))) = decode_frame::<T>(rest) {
        n += 1;
        rest = &rest[used..];
    }
    n
}
