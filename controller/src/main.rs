//! `ovl-controller`: initialise the PKI, issue certificates, run the controller, audit the store.
//!
//! Layer: the binary, over every layer of the library (see `lib.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};
use ovl_common::identity::Identity;
use ovl_common::HostName;
use ovl_controller::join::JoinService;
use ovl_controller::ops;
use ovl_controller::pki::{self, Ca, Validity};
use ovl_controller::server::{unix_now, Server};
use ovl_controller::store::{
    Backup, EtcdOptions, EtcdStore, RedbReader, RedbStore, Settings, Store, StoreError,
};
use ovl_controller::tokens::Tokens;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The ovl controller: owns tenants, hosts, endpoints and their allocations, and pushes each
/// host's intent to its agent over QUIC with mutual TLS.
#[derive(Parser, Debug)]
#[command(
    name = "ovl-controller",
    version,
    after_help = "\
First run:
  ovl-controller init --pki /etc/ovl/pki
  ovl-controller issue host node1 --pki /etc/ovl/pki     # copy pki/hosts/node1 to node1
  ovl-controller run --pki /etc/ovl/pki --db /var/lib/ovl/controller.redb
  ovl --controller 127.0.0.1:7300 --credentials /etc/ovl/pki/admin status

Joining hosts with tokens instead of copying bundles:
  ovl-controller run ... --join-listen 0.0.0.0:7301
  ovl-controller token create --host node2 --join-address 10.0.0.1:7301
      # prints the token, and on stderr the join command to run on node2:
  ovl-agent join --controller 10.0.0.1:7301 --token TOKEN --ca-hash sha256:..."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the cluster CA, the controller's certificate and the admin certificate.
    ///
    /// Writes PKI/ca.crt, PKI/ca.key (0600), PKI/controller/ and PKI/admin/ (each a bundle of
    /// ca.crt, tls.crt and tls.key). Refuses to overwrite an existing CA unless --force.
    Init {
        /// PKI directory.
        #[arg(
            long,
            env = "OVL_PKI",
            default_value = "/etc/ovl/pki",
            value_name = "DIR"
        )]
        pki: PathBuf,
        /// Extra DNS names for the controller's certificate (clients always verify
        /// `ovl-controller`, so this is rarely needed).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// Replace an existing CA; every certificate issued by the old one stops working.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate bundle for a host or an extra admin.
    Issue {
        #[command(subcommand)]
        what: IssueWhat,
    },
    /// Run the controller.
    ///
    /// Serves agents (their intents, over QUIC with mutual TLS) and the API (`ovl`, the
    /// Docker driver, the CNI plugin) on --listen, keeps the store in the --db redb file or
    /// in etcd, and moves tenant routers off hosts that are gone. Several controllers may
    /// share one etcd store: one leads (router moves), all serve. systemd's
    /// `ovl-controller.service` runs it (Type=notify, with a watchdog).
    #[command(after_help = "Examples:
  ovl-controller run --pki /etc/ovl/pki --db /var/lib/ovl/controller.redb
  ovl-controller run --join-listen 0.0.0.0:7301 --metrics-listen 127.0.0.1:9300
  ovl-controller run --etcd-endpoints https://10.0.0.1:2379,https://10.0.0.2:2379 \\
      --etcd-ca etcd-ca.crt --etcd-cert ctl.crt --etcd-key ctl.key
Logs go to stderr (the journal under systemd); OVL_LOG=debug says more.")]
    Run {
        /// PKI directory; the controller uses its bundle PKI/controller.
        #[arg(
            long,
            env = "OVL_PKI",
            default_value = "/etc/ovl/pki",
            value_name = "DIR"
        )]
        pki: PathBuf,
        /// The redb database file; created if missing. Not used with --etcd-endpoints (but
        /// the default join token directory is still beside it).
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        /// UDP address to listen on for QUIC.
        #[arg(
            long,
            env = "OVL_LISTEN",
            default_value = "0.0.0.0:7300",
            value_name = "ADDR"
        )]
        listen: SocketAddr,
        /// Range for automatically allocated VNIs and GRE keys, as FIRST-LAST.
        #[arg(long, default_value = "1000-999999", value_name = "FIRST-LAST")]
        key_range: String,
        /// Underlay MTU assumed for default tenant MTUs (tenant MTU = this − encapsulation).
        #[arg(long, default_value_t = 1500, value_name = "BYTES")]
        underlay_mtu: u16,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Also listen for `ovl-agent join` on this UDP address (7301 by convention). Joins
        /// need no client certificate, only a token from `ovl-controller token create`, and
        /// need the CA key (PKI/ca.key). Off unless given.
        #[arg(long, env = "OVL_JOIN_LISTEN", value_name = "ADDR")]
        join_listen: Option<SocketAddr>,
        #[command(flatten)]
        tokens: TokenDir,
        /// Seconds a tenant router's host may be disconnected before the router moves to
        /// another host.
        #[arg(
            long,
            env = "OVL_GATEWAY_FAILOVER_SECS",
            default_value_t = 30,
            value_name = "SECS"
        )]
        gateway_failover_secs: u64,
        /// Serve Prometheus metrics at http://ADDR/metrics (off unless given; e.g.
        /// 127.0.0.1:9300). docs/operations.md lists them.
        #[arg(long, env = "OVL_METRICS_LISTEN", value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        // Flattened groups with a help heading of their own come last: clap gives every
        // option declared after one that heading.
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Manage one-time join tokens, with which a host obtains its certificate
    /// (`ovl-agent join`) without copying a bundle.
    Token {
        #[command(subcommand)]
        what: TokenWhat,
    },
    /// Audit the store: no duplicated or leaked allocations, no dangling references.
    /// Runs beside running controllers, at one committed state (a redb file that a running
    /// controller holds is checked in a snapshot the controller hands out, as for `backup`).
    Check {
        /// The redb database file (unless the store is in etcd).
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Write a backup of the store: every row at one committed state, in a file that
    /// `restore` reads into a redb file or an etcd store (so it also moves a cluster between
    /// them). Runs beside running controllers: an etcd store is read directly; a redb file
    /// that a running controller holds is asked of that controller (--controller).
    Backup {
        /// The file to write (mode 0600; replaced if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The redb database file (unless the store is in etcd).
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Restore a backup into a new store (a redb file at --db, or an etcd prefix), then
    /// check it. Stop every controller of that store first.
    Restore {
        /// The file `ovl-controller backup` wrote.
        file: PathBuf,
        /// The redb database file (unless the store is in etcd).
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        /// Replace a store that is already there.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Print ovl-controller's man page (roff; `ovl-controller man | man -l -`).
    #[command(hide = true)]
    Man,
}

/// Asking a running controller instead of opening the store.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Through a running controller")]
struct RemoteArgs {
    /// Ask the running controller at HOST:PORT for a snapshot of its store instead of
    /// opening the store. Without it, a --db file that a running controller holds is asked of
    /// the controller on this machine, at 127.0.0.1:7300.
    #[arg(long = "controller", value_name = "HOST:PORT")]
    controller: Option<String>,
    /// Administrator credentials to ask with [default: PKI/admin].
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// PKI directory, for its admin bundle.
    #[arg(
        long,
        env = "OVL_PKI",
        default_value = "/etc/ovl/pki",
        value_name = "DIR"
    )]
    pki: PathBuf,
}

impl RemoteArgs {
    /// The store's backup, asked of a running controller: the one given, else the one on
    /// this machine (`held` says which file it holds, for the message).
    fn fetch(&self, held: Option<&std::path::Path>) -> anyhow::Result<Backup> {
        let controller = self.controller.as_deref().unwrap_or(LOCAL_CONTROLLER);
        let credentials = self
            .credentials
            .clone()
            .unwrap_or_else(|| self.pki.join("admin"));
        if let Some(path) = held {
            eprintln!(
                "{} is held by a running controller; asking the controller at {controller} for a snapshot",
                path.display()
            );
        }
        ovl_controller::remote::fetch_backup(controller, &credentials)
    }
}

/// Where a controller on this machine answers with the default `--listen`.
const LOCAL_CONTROLLER: &str = "127.0.0.1:7300";

/// Reads the redb file at `db`, or, when a running controller holds it, asks that
/// controller: either way a backup of one committed state.
fn redb_backup(db: &std::path::Path, remote: &RemoteArgs) -> anyhow::Result<Backup> {
    match RedbReader::open(db) {
        Ok(reader) => reader
            .backup()
            .with_context(|| format!("reading {}", db.display())),
        Err(StoreError::Held { .. }) => remote.fetch(Some(db)),
        Err(e) => Err(e).with_context(|| format!("opening {}", db.display())),
    }
}

/// Checks a snapshot a running controller handed out ([`RemoteArgs::fetch`]): restored into
/// a redb file of its own in a private temporary directory, checked there, then removed.
fn check_snapshot(backup: &Backup) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("ovl-check-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let checked = (|| {
        let store = RedbStore::restore(&dir.join("snapshot.redb"), backup, false)
            .context("taking in the snapshot")?;
        store.check().context("checking the store")
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let report = checked?;
    println!(
        "a snapshot at store revision {} ({} rows), handed out by the running controller:",
        backup.revision,
        backup.len()
    );
    println!("{report}");
    if !report.is_clean() {
        bail!("the store is inconsistent");
    }
    Ok(())
}

/// Where the store is when it is in etcd instead of a redb file.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Store in etcd (instead of --db)")]
struct EtcdArgs {
    /// Keep the store in this etcd cluster instead of a redb file: its members'
    /// client URLs, comma-separated (https://10.0.0.1:2379,https://10.0.0.2:2379,...). Any
    /// number of controllers may share one etcd store.
    #[arg(
        long,
        env = "OVL_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    etcd_endpoints: Vec<String>,
    /// The CA that signed the etcd members' certificates.
    #[arg(
        long,
        env = "OVL_ETCD_CA",
        requires = "etcd_endpoints",
        value_name = "FILE"
    )]
    etcd_ca: Option<PathBuf>,
    /// This controller's client certificate for etcd (etcd's --client-cert-auth).
    #[arg(
        long,
        env = "OVL_ETCD_CERT",
        requires = "etcd_key",
        value_name = "FILE"
    )]
    etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert.
    #[arg(
        long,
        env = "OVL_ETCD_KEY",
        requires = "etcd_cert",
        value_name = "FILE"
    )]
    etcd_key: Option<PathBuf>,
    /// Every key ovl writes starts with this, so one etcd cluster can hold several ovl
    /// clusters.
    #[arg(
        long,
        env = "OVL_ETCD_PREFIX",
        default_value = EtcdOptions::DEFAULT_PREFIX,
        value_name = "PREFIX"
    )]
    etcd_prefix: String,
}

impl EtcdArgs {
    /// The etcd store's options, or `None` to use the redb file.
    fn options(&self) -> anyhow::Result<Option<EtcdOptions>> {
        if self.etcd_endpoints.is_empty() {
            return Ok(None);
        }
        let tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
            (Some(ca), Some(cert), Some(key)) => Some(ovl_etcd::TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None) => None,
            _ => bail!("--etcd-ca, --etcd-cert and --etcd-key go together: give all three for an etcd cluster with TLS, or none"),
        };
        if tls.is_none()
            && self
                .etcd_endpoints
                .iter()
                .any(|e| e.starts_with("https://"))
        {
            bail!("https etcd endpoints need --etcd-ca, --etcd-cert and --etcd-key");
        }
        Ok(Some(EtcdOptions {
            etcd: ovl_etcd::Settings {
                endpoints: self.etcd_endpoints.clone(),
                tls,
                timeout: ETCD_TIMEOUT,
            },
            prefix: self.etcd_prefix.clone(),
        }))
    }
}

/// How long one etcd request may take before the client tries another member.
const ETCD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where join tokens are kept.
#[derive(clap::Args, Debug)]
struct TokenDir {
    /// Token directory; `join-tokens` beside the database (--db) when not given.
    #[arg(long = "tokens", env = "OVL_TOKENS", value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl TokenDir {
    fn resolve(&self, db: &std::path::Path) -> Tokens {
        Tokens::new(self.dir.clone().unwrap_or_else(|| Tokens::default_dir(db)))
    }
}

#[derive(Subcommand, Debug)]
enum TokenWhat {
    /// Create a one-time join token and print it (only the token, on stdout).
    ///
    /// The token lets one host obtain one certificate with `ovl-agent join`: for the name
    /// given with --host, or, without --host, for any name the controller does not know yet.
    /// It works once and expires after --ttl. Only its SHA-256 is stored.
    Create {
        /// Bind the token to this host name.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// How long the token is valid (`30m`, `1h`, `2d`; at most 30 days).
        #[arg(
            long,
            default_value = "1h",
            value_parser = humantime::parse_duration,
            value_name = "DURATION"
        )]
        ttl: std::time::Duration,
        /// The database the controller runs with; the token directory is beside it.
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        #[command(flatten)]
        tokens: TokenDir,
        /// PKI directory, to print the CA hash the joining host pins.
        #[arg(
            long,
            env = "OVL_PKI",
            default_value = "/etc/ovl/pki",
            value_name = "DIR"
        )]
        pki: PathBuf,
        /// The address hosts reach the join endpoint at (`HOST:PORT`), for the join command
        /// this prints. By default this machine's first IPv4 address that is up and not
        /// loopback, with port 7301 (the `--join-listen` convention).
        #[arg(long, env = "OVL_JOIN_ADDRESS", value_name = "HOST:PORT")]
        join_address: Option<String>,
    },
    /// List the tokens on record (never the tokens themselves: an id, a host, an expiry).
    List {
        /// The database the controller runs with; the token directory is beside it.
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        #[command(flatten)]
        tokens: TokenDir,
    },
    /// Delete an unused token by the id `token list` shows (or a unique prefix of it).
    Revoke {
        /// The token's id as `token list` shows it, or a unique prefix of it.
        id: String,
        /// The database the controller runs with; the token directory is beside it.
        #[arg(
            long,
            env = "OVL_DB",
            default_value = "/var/lib/ovl/controller.redb",
            value_name = "FILE"
        )]
        db: PathBuf,
        #[command(flatten)]
        tokens: TokenDir,
    },
}

#[derive(Subcommand, Debug)]
enum IssueWhat {
    /// A host's bundle (PKI/hosts/NAME unless --out); the agent on that host uses it.
    Host {
        /// The host's name, as its agent will be known (a-z, 0-9 and '-').
        name: String,
        /// PKI directory (its CA signs the bundle).
        #[arg(
            long,
            env = "OVL_PKI",
            default_value = "/etc/ovl/pki",
            value_name = "DIR"
        )]
        pki: PathBuf,
        /// Where to write the bundle.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// An extra admin's bundle (PKI/admins/NAME unless --out).
    Admin {
        /// The administrator's name, recorded in the certificate and in the logs.
        name: String,
        /// PKI directory (its CA signs the bundle).
        #[arg(
            long,
            env = "OVL_PKI",
            default_value = "/etc/ovl/pki",
            value_name = "DIR"
        )]
        pki: PathBuf,
        /// Where to write the bundle.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_json = matches!(cli.command, Command::Run { log_json: true, .. });
    ovl_common::daemon::init_tracing(log_json);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn parse_range(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u32>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--key-range '{s}' must look like FIRST-LAST"))?;
    let a: u32 = a
        .trim()
        .parse()
        .with_context(|| format!("--key-range: '{a}' is not a number"))?;
    let b: u32 = b
        .trim()
        .parse()
        .with_context(|| format!("--key-range: '{b}' is not a number"))?;
    if a == 0 || a > b || b > (1 << 24) - 1 {
        bail!("--key-range {a}-{b} must satisfy 1 <= FIRST <= LAST <= 16777215 (the VNI space)");
    }
    Ok(a..=b)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Man => {
            ovl_common::cli_docs::man(Cli::command(), "8", &mut std::io::stdout())?;
            Ok(())
        }
        Command::Init {
            pki: dir,
            dns,
            force,
        } => {
            let r = pki::init(&dir, &dns, force)
                .with_context(|| format!("initialising PKI in {}", dir.display()))?;
            println!("cluster CA:          {}", r.ca.display());
            println!("CA fingerprint:      {}", r.fingerprint);
            println!("controller bundle:   {}", r.controller.display());
            println!("admin bundle (CLI):  {}", r.admin.display());
            println!(
                "next: ovl-controller issue host NAME --pki {}",
                dir.display()
            );
            Ok(())
        }
        Command::Issue { what } => {
            let (identity, dir, out, days) = match what {
                IssueWhat::Host {
                    name,
                    pki,
                    out,
                    days,
                } => (
                    Identity::Host(HostName::new(name).context("host name")?),
                    pki,
                    out,
                    days,
                ),
                IssueWhat::Admin {
                    name,
                    pki,
                    out,
                    days,
                } => {
                    ovl_common::model::validate_name("admin name", &name)?;
                    (Identity::Admin(name), pki, out, days)
                }
            };
            if days < 1 {
                bail!("--days must be at least 1");
            }
            let ca = Ca::load(&dir)?;
            let out = out.unwrap_or_else(|| pki::bundle_dir(&dir, &identity));
            ca.write_bundle(
                &identity,
                &[],
                Validity::from_now(time::Duration::days(days)),
                &out,
            )
            .with_context(|| format!("issuing a certificate for {identity}"))?;
            println!(
                "issued {} for {identity}: {}",
                identity.to_uri(),
                out.display()
            );
            Ok(())
        }
        Command::Token { what } => token(what),
        Command::Check { db, etcd, remote } => {
            if remote.controller.is_some() {
                return check_snapshot(&remote.fetch(None)?);
            }
            let store: Box<dyn Store> = match etcd.options()? {
                Some(options) => {
                    Box::new(EtcdStore::open_existing(&options).with_context(|| {
                        format!(
                            "reading the store from etcd {}",
                            options.etcd.endpoints.join(",")
                        )
                    })?)
                }
                None => {
                    let reader = match RedbReader::open(&db) {
                        Ok(reader) => reader,
                        Err(StoreError::Held { .. }) => {
                            return check_snapshot(&remote.fetch(Some(&db))?)
                        }
                        Err(e) => {
                            return Err(e).with_context(|| format!("opening {}", db.display()))
                        }
                    };
                    let report = reader.check().context("checking the store")?;
                    println!("{report}");
                    if !report.is_clean() {
                        bail!("the store is inconsistent");
                    }
                    return Ok(());
                }
            };
            let report = store.check().context("checking the store")?;
            println!("{report}");
            if !report.is_clean() {
                bail!("the store is inconsistent");
            }
            Ok(())
        }
        Command::Backup {
            out,
            db,
            etcd,
            remote,
        } => {
            let backup = match etcd.options()? {
                _ if remote.controller.is_some() => remote.fetch(None)?,
                Some(options) => EtcdStore::open_existing(&options)
                    .and_then(|s| s.backup())
                    .with_context(|| {
                        format!(
                            "reading the store from etcd {}",
                            options.etcd.endpoints.join(",")
                        )
                    })?,
                None => redb_backup(&db, &remote)?,
            };
            backup.write(&out)?;
            println!(
                "backup of {} rows at store revision {} written to {}",
                backup.len(),
                backup.revision,
                out.display()
            );
            Ok(())
        }
        Command::Restore {
            file,
            db,
            etcd,
            force,
        } => {
            let backup = Backup::read(&file)?;
            let store: Box<dyn Store> = match etcd.options()? {
                Some(options) => Box::new(
                    EtcdStore::restore(&options, &backup, force).with_context(|| {
                        format!("restoring into etcd prefix {}", options.prefix)
                    })?,
                ),
                None => Box::new(
                    RedbStore::restore(&db, &backup, force)
                        .with_context(|| format!("restoring into {}", db.display()))?,
                ),
            };
            let report = store.check().context("checking the restored store")?;
            println!(
                "restored {} rows (store revision {})",
                backup.len(),
                backup.revision
            );
            println!("{report}");
            if !report.is_clean() {
                bail!("the restored store is inconsistent");
            }
            Ok(())
        }
        Command::Run {
            pki,
            db,
            etcd,
            listen,
            key_range,
            underlay_mtu,
            log_json: _,
            join_listen,
            tokens,
            gateway_failover_secs,
            metrics_listen,
        } => {
            let settings = Settings {
                key_range: parse_range(&key_range)?,
                underlay_mtu,
            };
            let (store, store_name) = match etcd.options()? {
                Some(options) => {
                    let name = format!(
                        "etcd {} (prefix {})",
                        options.etcd.endpoints.join(","),
                        options.prefix
                    );
                    let store = ops::open_etcd(&options, settings)
                        .with_context(|| format!("opening the store in {name}"))?;
                    (store, name)
                }
                None => {
                    if let Some(parent) = db.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("creating {}", parent.display()))?;
                    }
                    let store = ops::open(&db, settings)
                        .with_context(|| format!("opening the store {}", db.display()))?;
                    (store, db.display().to_string())
                }
            };
            let bundle_dir = pki::bundle_dir(&pki, &Identity::Controller);
            let bundle = ovl_common::tls::Bundle::load(&bundle_dir).with_context(|| {
                format!(
                    "loading the controller's credentials from {}",
                    bundle_dir.display()
                )
            })?;
            let config = ovl_common::tls::server_config(&bundle)
                .context("building the TLS configuration")?;
            let join = match join_listen {
                Some(addr) => {
                    let ca = Ca::load(&pki).context("the join endpoint signs certificates, so it needs the CA key; drop --join-listen to run without it")?;
                    let tokens = tokens.resolve(&db);
                    tokens
                        .ensure()
                        .context("preparing the join token directory")?;
                    let config = ovl_controller::join::server_config(&bundle)
                        .context("building the join endpoint's TLS configuration")?;
                    Some((addr, ca, tokens, config))
                }
                None => None,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async move {
                let endpoint = quinn::Endpoint::server(config, listen)
                    .with_context(|| format!("listening on udp {listen}"))?;
                info!(%listen, store = %store_name, "controller listening");
                if let Err(e) =
                    ovl_common::notify::ready(&format!("listening on {listen}, store {store_name}"))
                {
                    tracing::error!("cannot report readiness to systemd: {e}");
                }
                tokio::spawn(ovl_common::notify::feed_watchdog());
                let shutdown = CancellationToken::new();
                let s = shutdown.clone();
                tokio::spawn(async move {
                    ovl_common::daemon::wait_for_signal().await;
                    info!("shutting down");
                    s.cancel();
                });
                let server = Server::new(store);
                let metrics = match metrics_listen {
                    Some(addr) => {
                        Some(ovl_common::metrics::listen(addr, server.metrics().clone()).await?)
                    }
                    None => None,
                };
                let joins = match join {
                    Some((addr, ca, tokens, config)) => {
                        let endpoint = quinn::Endpoint::server(config, addr)
                            .with_context(|| format!("listening for joins on udp {addr}"))?;
                        info!(%addr, tokens = %tokens.dir().display(), "join endpoint listening");
                        let service = JoinService::new(ca, tokens, server.store().clone());
                        Some(tokio::spawn(ovl_controller::join::serve(
                            endpoint,
                            std::sync::Arc::new(service),
                            shutdown.clone(),
                        )))
                    }
                    None => None,
                };
                let gateways = tokio::spawn(ovl_controller::failover::run(
                    server.controller().clone(),
                    server.sessions().clone(),
                    std::time::Duration::from_secs(gateway_failover_secs),
                    shutdown.clone(),
                ));
                let follower = tokio::spawn(ovl_controller::follow::run(
                    server.controller().clone(),
                    server.sessions().clone(),
                    shutdown.clone(),
                ));
                server.serve(endpoint, shutdown).await;
                let _ = gateways.await;
                let _ = follower.await;
                if let Some(joins) = joins {
                    let _ = joins.await;
                }
                if let Some(metrics) = metrics {
                    metrics.abort();
                }
                Ok::<_, anyhow::Error>(())
            })?;
            info!("controller stopped");
            Ok(())
        }
    }
}

/// The join endpoint's port by convention (`--join-listen 0.0.0.0:7301`).
const JOIN_PORT: u16 = 7301;

/// This machine's first IPv4 address on an interface that is up and not loopback, in the
/// kernel's order: where hosts most likely reach the controller.
fn first_address() -> Option<std::net::Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let flags = a.flags;
        if !flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Some(sin.ip());
        }
    }
    None
}

fn token(what: TokenWhat) -> anyhow::Result<()> {
    let when = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    match what {
        TokenWhat::Create {
            host,
            ttl,
            db,
            tokens,
            pki,
            join_address,
        } => {
            let host = host
                .map(|h| HostName::new(h).context("--host"))
                .transpose()?;
            let tokens = tokens.resolve(&db);
            let t = tokens
                .create(host.clone(), ttl, unix_now())
                .with_context(|| format!("creating a token in {}", tokens.dir().display()))?;
            println!("{}", t.token);
            let for_whom = match &host {
                Some(h) => format!("host '{h}'"),
                None => "any new host name (the joining host passes --host NAME)".to_string(),
            };
            eprintln!(
                "join token {} for {for_whom}, valid until {}",
                t.id,
                when(t.record.expires)
            );
            let ca_hash = ovl_common::tls::load_certs(&pki.join(ovl_common::tls::CA_FILE))
                .map(|certs| ovl_common::tls::fingerprint(&certs[0]))
                .unwrap_or_else(|_| {
                    format!(
                        "<the hash `ovl-controller init` printed for {}>",
                        pki.display()
                    )
                });
            let host_arg = if host.is_some() { "" } else { " --host NAME" };
            let (address, guessed) = match join_address {
                Some(a) => (a, false),
                None => match first_address() {
                    Some(ip) => (format!("{ip}:{JOIN_PORT}"), true),
                    None => (format!("<this controller's address>:{JOIN_PORT}"), true),
                },
            };
            eprintln!(
                "on the host: ovl-agent join --controller {address} --token {} --ca-hash {ca_hash}{host_arg}",
                t.token
            );
            if guessed {
                eprintln!("({address} is a guess from this machine's addresses; pass --join-address HOST:PORT if hosts reach the join endpoint another way)");
            }
            Ok(())
        }
        TokenWhat::List { db, tokens } => {
            let tokens = tokens.resolve(&db);
            let list = tokens
                .list(unix_now())
                .with_context(|| format!("listing {}", tokens.dir().display()))?;
            let mut table = ovl_common::table::Table::new(&["ID", "STATE", "HOST", "EXPIRES"]);
            for t in list {
                let host = t
                    .record
                    .host
                    .as_ref()
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "(any new)".into());
                table.row(vec![
                    t.id.to_string(),
                    t.state.to_string(),
                    host,
                    when(t.record.expires),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        TokenWhat::Revoke { id, db, tokens } => {
            let tokens = tokens.resolve(&db);
            let gone = tokens.revoke(&id)?;
            println!("revoked token {}", gone.id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand, option and value is described in `--help` (the rule is
    /// `ovl_common::cli_docs::help_gaps`).
    #[test]
    fn help_leaves_nothing_unsaid() {
        ovl_common::cli_docs::assert_no_help_gaps(&Cli::command());
    }
}
