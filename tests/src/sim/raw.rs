//! Raw QUIC peers ([`RawPeer`]) for abuse and authentication tests, including clients that
//! present no certificate or speak another ALPN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ovl_common::frame;
use ovl_common::proto::{ClientHello, ServerHello};
use ovl_common::tls::{self, Bundle};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config_from(tls: rustls::ClientConfig) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(tls::transport());
    Ok(cfg)
}

fn roots(
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

/// A client configuration that trusts `ca` (so the controller is verified) but presents no
/// certificate of its own.
pub fn config_without_certificate(
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ovl_common::proto::ALPN.to_vec()];
    client_config_from(tls)
}

/// The normal client configuration of `bundle`, but offering `alpn` instead of `ovl/1`.
pub fn config_with_alpn(bundle: &Bundle, alpn: &[u8]) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&bundle.ca)?)
        .with_client_auth_cert(bundle.chain.clone(), bundle.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    client_config_from(tls)
}

/// One QUIC connection to the controller with its single bidirectional stream open, driven
/// by hand: the test decides which bytes go on the stream.
#[derive(Debug)]
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl RawPeer {
    /// Connects with `config` and opens the stream. Completing this does not mean the
    /// controller accepted the certificate: with TLS 1.3 the client finishes its handshake
    /// before the server has checked the client's certificate.
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        timeout: Duration,
    ) -> anyhow::Result<RawPeer> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let connecting = endpoint.connect_with(config, addr, tls::SERVER_NAME)?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .context("handshake timed out")??;
        let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
            .await
            .context("opening the stream timed out")??;
        Ok(RawPeer {
            endpoint,
            conn,
            send,
            recv,
        })
    }

    /// Connects with the normal client configuration of `bundle`.
    pub async fn with_bundle(addr: SocketAddr, bundle: &Bundle) -> anyhow::Result<RawPeer> {
        Self::connect(addr, tls::client_config(bundle)?, Duration::from_secs(10)).await
    }

    /// Sends `hello` and reads the controller's answer.
    pub async fn hello(&mut self, hello: &ClientHello) -> anyhow::Result<ServerHello> {
        frame::write_frame(&mut self.send, hello).await?;
        let answer =
            tokio::time::timeout(Duration::from_secs(15), frame::read_frame(&mut self.recv))
                .await
                .context("no answer to the hello")??;
        Ok(answer)
    }

    /// Closes the connection and gives the close a moment to reach the controller.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// The TLS alert carried by a QUIC connection error, if the connection died of one (QUIC
/// carries alerts as the error codes 0x100 + alert).
pub fn tls_alert(e: &quinn::ConnectionError) -> Option<u8> {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return None,
    };
    (0x100..=0x1ff)
        .contains(&code)
        .then(|| (code - 0x100) as u8)
}
