//! Length-delimited postcard frames: a 4-byte big-endian length, then that many bytes of
//! postcard. The length is bounded by [`MAX_FRAME_LEN`] so a peer cannot make us allocate
//! without limit; an oversized length is refused before anything is read.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload accepted or sent: 4 MiB holds the intent of a host with thousands of
/// endpoints and is still small enough to buffer per connection.
pub const MAX_FRAME_LEN: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame does not decode: {0}")]
    Decode(postcard::Error),
    #[error("frame has {0} trailing bytes after the message")]
    Trailing(usize),
    #[error("could not encode frame: {0}")]
    Encode(postcard::Error),
    #[error("the peer closed the stream")]
    Closed,
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg).map_err(FrameError::Encode)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame body (without its length prefix). Trailing bytes are an error: a frame
/// holds exactly one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// Splits one complete frame off the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the message and how many bytes it used. Used by the fuzz target and the tests; the
/// async reader below does the same over a stream.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let msg = decode_body(&buf[4..4 + len])?;
    Ok(Some((msg, 4 + len)))
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame's raw body. A clean end of stream before a length prefix is
/// [`FrameError::Closed`]; an end inside a frame is an I/O error.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    read_body_limited(r, MAX_FRAME_LEN).await
}

/// [`read_body`] with a tighter bound than [`MAX_FRAME_LEN`], for endpoints that expect only
/// small frames (the join endpoint, which serves clients without certificates).
pub async fn read_body_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Err(FrameError::Closed)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame length",
                )
                .into())
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Reads and decodes one frame.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let body = read_body(r).await?;
    decode_body(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ApiRequest, ClientHello, ClientRole, TenantCreate, PROTOCOL_VERSION};
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_partial() {
        let msg = ApiRequest::TenantShow {
            name: "blue".into(),
        };
        let bytes = encode(&msg).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_frame::<ApiRequest>(&bytes[..cut]).unwrap().is_none());
        }
        let (back, used) = decode_frame::<ApiRequest>(&bytes).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut bytes = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode_frame::<ApiRequest>(&bytes),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = postcard::to_stdvec(&ApiRequest::Status).unwrap();
        body.push(0);
        assert!(matches!(
            decode_body::<ApiRequest>(&body),
            Err(FrameError::Trailing(1))
        ));
    }

    #[test]
    fn version_is_readable_whatever_follows() {
        let hello = ClientHello {
            version: PROTOCOL_VERSION + 7,
            role: ClientRole::Admin,
        };
        let body = postcard::to_stdvec(&hello).unwrap();
        let (v, _) = postcard::take_from_bytes::<u32>(&body).unwrap();
        assert_eq!(v, PROTOCOL_VERSION + 7);
    }

    #[tokio::test]
    async fn back_to_back_frames_on_a_stream() {
        let a = ApiRequest::Status;
        let b = ApiRequest::TenantCreate(TenantCreate {
            key: Some(5),
            ..TenantCreate::new("red", "10.0.0.0/24")
        });
        let mut buf = encode(&a).unwrap();
        buf.extend(encode(&b).unwrap());
        let mut rd = &buf[..];
        assert_eq!(read_frame::<_, ApiRequest>(&mut rd).await.unwrap(), a);
        assert_eq!(read_frame::<_, ApiRequest>(&mut rd).await.unwrap(), b);
        assert!(matches!(
            read_frame::<_, ApiRequest>(&mut rd).await,
            Err(FrameError::Closed)
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame::<ApiRequest>(&bytes);
            let _ = decode_frame::<ClientHello>(&bytes);
        }

        #[test]
        fn names_round_trip(name in "[a-z][a-z0-9-]{0,30}", key in any::<u32>()) {
            let msg = ApiRequest::TenantCreate(TenantCreate { segment: Some("gre".into()), key: Some(key), mtu: Some(1400), ..TenantCreate::new(name, "10.1.0.0/16") });
            let bytes = encode(&msg).unwrap();
            let (back, _) = decode_frame::<ApiRequest>(&bytes).unwrap().unwrap();
            prop_assert_eq!(back, msg);
        }
    }
}

#[cfg(test)]
mod reply_tests {
    use super::*;
    use crate::intent::{ObjectKind, ObjectStatus};
    use crate::model::{Endpoint, Host, MacAddr, NetnsTarget, SegmentType, Tenant};
    use crate::proto::{
        ApiError, ApiReply, ApiResponse, EndpointInfo, ErrorCode, HostInfo, HostStatus, TenantInfo,
    };

    /// postcard cannot encode every serde feature (internally tagged enums, `flatten`); every
    /// reply shape must survive a round trip.
    #[test]
    fn every_reply_round_trips() {
        let tenant = Tenant {
            id: 1,
            name: "blue".parse().unwrap(),
            segment: SegmentType::Vxlan,
            key: 1000,
            vlan: 1,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            mtu_explicit: false,
            created: 5,
            gateway_mac: MacAddr([0x0a, 0x58, 0, 0, 0, 9]),
            nat: true,
            gateway_host: Some("h1".parse().unwrap()),
            router_host: Some("h1".parse().unwrap()),
            attach: crate::model::HostAttach::AnyHost,
        };
        let host = Host {
            id: 2,
            name: "h1".parse().unwrap(),
            underlay: "198.51.100.1".parse().unwrap(),
            underlay_mtu: 1500,
            capabilities: vec!["datapath=netdev".into()],
            registered: 6,
            state: Default::default(),
            certificates: Vec::new(),
        };
        let status = HostStatus {
            name: host.name.clone(),
            connected: true,
            last_contact: Some(7),
            remote: Some("127.0.0.1:5".into()),
            agent_version: Some("0.1.0".into()),
            datapath: Some("netdev".into()),
            desired_generation: 3,
            applied_generation: Some(3),
            endpoints: 1,
            errors: vec![ObjectStatus::failed(ObjectKind::Endpoint, "e", "boom")],
        };
        let endpoint = Endpoint {
            id: 3,
            name: "e1".parse().unwrap(),
            tenant: tenant.name.clone(),
            host: host.name.clone(),
            target: NetnsTarget::Name("c1".into()),
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0, 0, 0, 0, 1]),
            ip: "10.0.0.2".parse().unwrap(),
            created: 8,
            publishes: vec!["8080:80".parse().unwrap(), "53:53/udp".parse().unwrap()],
        };
        let info = EndpointInfo {
            endpoint,
            prefix_len: 24,
            gateway: tenant.gateway,
            mtu: 1450,
            vlan: 1,
            state: "ok".into(),
            error: None,
            gateway_host: Some(host.name.clone()),
            gateway_address: Some(host.underlay),
        };
        let replies: Vec<ApiResponse> = vec![
            Ok(ApiReply::Tenant(TenantInfo {
                tenant: tenant.clone(),
                endpoints: 1,
                hosts: vec![host.name.clone()],
            })),
            Ok(ApiReply::Tenants(vec![TenantInfo {
                tenant,
                endpoints: 0,
                hosts: vec![],
            }])),
            Ok(ApiReply::Host(HostInfo {
                host: host.clone(),
                status: status.clone(),
            })),
            Ok(ApiReply::Hosts(vec![HostInfo {
                host,
                status: status.clone(),
            }])),
            Ok(ApiReply::Endpoint(info.clone())),
            Ok(ApiReply::Endpoints(vec![info])),
            Ok(ApiReply::Deleted {
                removed: vec!["tenant blue".into()],
            }),
            Ok(ApiReply::Status(vec![status])),
            Err(ApiError::field(ErrorCode::Conflict, "vni", "taken")),
        ];
        for r in replies {
            let bytes = encode(&r).unwrap();
            let (back, _) = decode_frame::<ApiResponse>(&bytes).unwrap().unwrap();
            assert_eq!(back, r);
        }
    }

    /// The gateway requests and an intent with a router survive a round trip.
    #[test]
    fn gateway_requests_and_routers_round_trip() {
        use crate::intent::{HostIntent, PublishIntent, RouterIntent};
        use crate::proto::{ApiRequest, ControllerToAgent, TenantCreate};
        use crate::Protocol;
        let requests = vec![
            ApiRequest::TenantCreateGateway {
                create: TenantCreate::new("red", "10.0.0.0/24"),
                nat: true,
                gateway_host: Some("h2".into()),
            },
            ApiRequest::TenantUpdate {
                name: "red".into(),
                nat: Some(false),
                gateway_host: Some(None),
            },
            ApiRequest::TenantUpdate {
                name: "red".into(),
                nat: None,
                gateway_host: Some(Some("h1".into())),
            },
            ApiRequest::Publish {
                endpoint: "web".into(),
                publish: "8080:80/tcp".into(),
            },
            ApiRequest::Unpublish {
                endpoint: "web".into(),
                publish: "8080".into(),
            },
        ];
        for r in requests {
            let bytes = encode(&r).unwrap();
            let (back, _) = decode_frame::<ApiRequest>(&bytes).unwrap().unwrap();
            assert_eq!(back, r);
        }
        let mut intent = HostIntent::empty("h1".parse().unwrap());
        intent.routers.push(RouterIntent {
            tenant_id: 4,
            tenant: "red".parse().unwrap(),
            vlan: 7,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, 3]),
            mtu: 1450,
            nat: true,
            publishes: vec![PublishIntent {
                proto: Protocol::Udp,
                host_port: 5353,
                endpoint: "dns".parse().unwrap(),
                ip: "10.0.0.5".parse().unwrap(),
                port: 53,
            }],
        });
        let msg = ControllerToAgent::Intent(intent);
        let bytes = encode(&msg).unwrap();
        let (back, _) = decode_frame::<ControllerToAgent>(&bytes).unwrap().unwrap();
        assert_eq!(back, msg);
    }
}
