//! A real etcd cluster for tests: N members of Debian's `etcd` on loopback, each on free
//! ports, with mutual TLS between clients and members and between members, under a CA made
//! for the cluster. Members can be killed and started again; everything is killed when the
//! cluster is dropped.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ovl_etcd::{Settings, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// One member: its ports, its data directory and its process while it runs.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A CA and the files one party presents, as PEM paths.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running etcd cluster and the files to reach it.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// What members present to each other and to clients.
    server: Pki,
    /// A client certificate signed by the cluster's CA.
    pub client: Pki,
    token: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers through every member. Ports
    /// are picked free and bound by etcd a moment later, so a test running beside may take
    /// one in between: a start that fails that way is tried again with other ports.
    pub fn start(n: usize) -> Result<Self> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start_once(n) {
                Err(e) if tries < 4 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("etcd cluster start lost a port race; trying other ports");
                }
                other => return other,
            }
        }
    }

    fn start_once(n: usize) -> Result<Self> {
        if ovl_lab::sys::which("etcd").is_none() {
            bail!("`etcd` is not installed; run deploy/install-deps.sh with OVL_DEV_PACKAGES=1");
        }
        let dir = tempfile::Builder::new()
            .prefix("ovl-etcd-")
            .tempdir()
            .context("making the cluster's directory")?;
        let (server, client) = make_pki(dir.path())?;
        let ports = free_ports(2 * n)?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("e{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data: dir.path().join(format!("e{i}.data")),
                log: dir.path().join(format!("e{i}.log")),
                child: None,
            });
        }
        let token = format!("ovl-test-{}-{}", std::process::id(), members[0].client_port);
        let mut cluster = EtcdCluster {
            dir,
            members,
            server,
            client,
            token,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The `ovl-controller run`/`check`/`restore` flags that put the store in this cluster
    /// (every member, the cluster's client certificate).
    pub fn controller_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--etcd-endpoints".into(),
            self.endpoints().join(",").into(),
            "--etcd-ca".into(),
            self.client.ca.clone().into(),
            "--etcd-cert".into(),
            self.client.cert.clone().into(),
            "--etcd-key".into(),
            self.client.key.clone().into(),
        ]
    }

    /// Client settings for every member, with the cluster's client certificate.
    pub fn settings(&self) -> Settings {
        self.settings_with(&self.client)
    }

    /// Client settings presenting `pki` instead.
    pub fn settings_with(&self, pki: &Pki) -> Settings {
        Settings {
            endpoints: self.endpoints(),
            tls: Some(TlsFiles {
                ca: pki.ca.clone(),
                cert: pki.cert.clone(),
                key: pki.key.clone(),
            }),
            timeout: Duration::from_secs(5),
        }
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let s = &self.server;
        let m = &self.members[i];
        let log = std::fs::File::create(&m.log)
            .with_context(|| format!("creating {}", m.log.display()))?;
        let state = if m.data.exists() { "existing" } else { "new" };
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&s.ca)
            .arg("--cert-file")
            .arg(&s.cert)
            .arg("--key-file")
            .arg(&s.key)
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(&s.ca)
            .arg("--peer-cert-file")
            .arg(&s.cert)
            .arg("--peer-key-file")
            .arg(&s.key)
            // Transactions that bump many hosts' generations at once.
            .args(["--max-txn-ops", "10000"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL: no goodbye to its peers).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// Waits until every running member reports the cluster's leader.
    pub fn wait_healthy(&mut self, within: Duration) -> Result<()> {
        let start = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("making a runtime")?;
        loop {
            let mut problems = Vec::new();
            for i in 0..self.members.len() {
                if !self.members[i].is_running() {
                    if self.members[i].child.is_some() {
                        bail!(
                            "etcd member {} exited; its log:\n{}",
                            self.members[i].name,
                            std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
                        );
                    }
                    continue;
                }
                let one = Settings {
                    endpoints: vec![self.members[i].client_url()],
                    ..self.settings()
                };
                let answer = rt.block_on(async {
                    let c = ovl_etcd::Client::new(&one)?;
                    c.status().await
                });
                match answer {
                    Ok(s) if s.leader != 0 => {}
                    Ok(_) => problems.push(format!("{}: no leader yet", self.members[i].name)),
                    Err(e) => problems.push(format!("{}: {e}", self.members[i].name)),
                }
            }
            if problems.is_empty() {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!("the etcd cluster is not healthy after {within:?}: {problems:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the member that is the raft leader now.
    pub fn leader(&self) -> Result<usize> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("making a runtime")?;
        for (i, member) in self.members.iter().enumerate() {
            let one = Settings {
                endpoints: vec![member.client_url()],
                ..self.settings()
            };
            let status = rt.block_on(async { ovl_etcd::Client::new(&one)?.status().await });
            if let Ok(s) = status {
                if s.leader != 0 && s.leader == s.header.member_id {
                    return Ok(i);
                }
            }
        }
        bail!("no member says it leads")
    }

    /// A CA, certificate and key that etcd's CA never signed (for refusal tests).
    pub fn foreign_client(&self) -> Result<Pki> {
        let (_, client) = make_pki(&self.dir.path().join("foreign"))?;
        Ok(client)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `count` distinct free TCP ports. Every listener is held until all are picked: one closed
/// at once may be handed out again by the next bind (CI once gave two members the same
/// port, and etcd refused the cluster for its duplicate URL).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let held = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port"))
        .collect::<Result<Vec<_>>>()?;
    held.iter()
        .map(|l| Ok(l.local_addr().context("reading the bound port")?.port()))
        .collect()
}

/// A CA, a member certificate (server and client use, for 127.0.0.1) and a client
/// certificate, written under `dir`.
fn make_pki(dir: &Path) -> Result<(Pki, Pki)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "ovl test etcd CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let ca_path = write("ca.crt", &ca_pem)?;
    let issue = |name: &str, server: bool| -> Result<Pki> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        if server {
            p.subject_alt_names = vec![
                SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
                SanType::DnsName("localhost".try_into()?),
            ];
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Pki {
            ca: ca_path.clone(),
            cert: write(&format!("{name}.crt"), &cert.pem())?,
            key: write(&format!("{name}.key"), &key.serialize_pem())?,
        })
    };
    Ok((issue("member", true)?, issue("client", false)?))
}
