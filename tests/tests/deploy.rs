//! `deploy/install.sh` into a scratch root (DESTDIR): the layout and modes it creates, that a
//! reinstall keeps edited configuration, that uninstall removes what it installed and keeps
//! data, that `--purge` leaves nothing, and that the units, sample configs and binaries agree
//! with each other (paths, directories, flag names). Also the agent's `Type=notify` readiness,
//! with a socket standing in for systemd's. Needs no privileges: with a destdir the script
//! changes no owner and never calls systemctl.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ovl_agent::config::FileConfig;
use ovl_tests::cluster::{terminate, Cluster};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Runs `deploy/install.sh ARGS` with the workspace's freshly built binaries.
fn install(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .arg("--bin-dir")
        .arg(ovl_tests::bin_dir())
        .args(args)
        .env_remove("DESTDIR")
        .output()
        .expect("run deploy/install.sh")
}

fn install_ok(args: &[&str]) -> String {
    // The binaries must exist; `bin` says how to build them if not.
    for b in ["ovl", "ovl-controller", "ovl-agent", "ovl-cni"] {
        ovl_tests::bin(b);
    }
    let out = install(args);
    assert!(
        out.status.success(),
        "install.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every path under `root` (relative, with a trailing `/` on directories) and its mode.
fn tree(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.expect("dir entry");
            let meta = e.metadata().expect("stat");
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("/{rel}/"), mode);
                walk(root, &e.path(), out);
            } else {
                out.insert(format!("/{rel}"), mode);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What the controller role installs (files and ovl's own directories), with modes.
const CONTROLLER: &[(&str, u32)] = &[
    ("/usr/local/bin/ovl", 0o755),
    ("/usr/local/bin/ovl-controller", 0o755),
    (
        "/usr/local/lib/systemd/system/ovl-controller.service",
        0o644,
    ),
    ("/etc/ovl/", 0o755),
    ("/etc/ovl/controller.env", 0o644),
    ("/etc/ovl/pki/", 0o700),
    ("/var/lib/ovl/", 0o750),
    ("/var/lib/ovl/join-tokens/", 0o700),
];

/// What the agent role installs.
const AGENT: &[(&str, u32)] = &[
    ("/usr/local/bin/ovl", 0o755),
    ("/usr/local/bin/ovl-agent", 0o755),
    ("/usr/local/lib/systemd/system/ovl-agent.service", 0o644),
    ("/etc/ovl/", 0o755),
    ("/etc/ovl/agent.toml", 0o644),
    ("/etc/ovl/host/", 0o700),
    ("/var/lib/ovl-agent/", 0o700),
    // The CNI plugin, and `ovl`, a link to it (so 0777), for `"type": "ovl"`; /opt/cni/bin
    // where the target has no /usr/lib/cni.
    ("/opt/cni/bin/ovl-cni", 0o755),
    ("/opt/cni/bin/ovl", 0o777),
];

/// Checks that everything in `expected` is there with its mode, and that no other file is.
fn assert_layout(root: &Path, expected: &[&[(&str, u32)]]) {
    let t = tree(root);
    let expected: BTreeMap<&str, u32> = expected.iter().flat_map(|l| l.iter().copied()).collect();
    for (path, mode) in &expected {
        match t.get(*path) {
            Some(m) => assert_eq!(m, mode, "{path}: mode {m:o}, expected {mode:o}"),
            None => panic!("{path} was not installed; the tree: {t:#?}"),
        }
    }
    for path in t.keys().filter(|p| !p.ends_with('/')) {
        assert!(
            expected.contains_key(path.as_str()),
            "{path} was installed but is not in the layout"
        );
    }
}

fn files(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|p| !p.ends_with('/'))
        .collect()
}

#[test]
fn install_creates_the_layout_and_uninstall_removes_it() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let dest = root.to_str().unwrap();
    install_ok(&["--destdir", dest]);
    assert_layout(&root, &[CONTROLLER, AGENT]);
    // The installed binaries are the built ones, the samples the repository's.
    for b in ["ovl", "ovl-controller", "ovl-agent"] {
        assert_eq!(
            std::fs::read(root.join("usr/local/bin").join(b)).unwrap(),
            std::fs::read(ovl_tests::bin(b)).unwrap(),
            "{b}"
        );
    }
    assert_eq!(
        std::fs::read(root.join("opt/cni/bin/ovl-cni")).unwrap(),
        std::fs::read(ovl_tests::bin("ovl-cni")).unwrap(),
    );
    assert_eq!(
        std::fs::read_link(root.join("opt/cni/bin/ovl")).unwrap(),
        Path::new("ovl-cni")
    );
    for (installed, sample) in [
        ("etc/ovl/agent.toml", "deploy/config/agent.toml"),
        ("etc/ovl/controller.env", "deploy/config/controller.env"),
        (
            "usr/local/lib/systemd/system/ovl-agent.service",
            "deploy/systemd/ovl-agent.service",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.join(installed)).unwrap(),
            std::fs::read(repo().join(sample)).unwrap(),
            "{installed}"
        );
    }

    // A reinstall keeps configuration an operator edited.
    let edited = "controller = \"192.0.2.1:7300\"\n";
    std::fs::write(root.join("etc/ovl/agent.toml"), edited).unwrap();
    let said = install_ok(&["--destdir", dest]);
    assert!(
        said.contains("keeping the existing /etc/ovl/agent.toml"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/ovl/agent.toml")).unwrap(),
        edited
    );

    // Uninstall removes what was installed and keeps data and edited configuration.
    std::fs::write(root.join("etc/ovl/pki/ca.crt"), "a CA").unwrap();
    std::fs::write(root.join("var/lib/ovl/controller.redb"), "a database").unwrap();
    let said = install_ok(&["--destdir", dest, "--uninstall"]);
    assert!(said.contains("kept /etc/ovl/agent.toml"), "{said}");
    assert_eq!(
        files(&root),
        [
            "/etc/ovl/agent.toml",
            "/etc/ovl/pki/ca.crt",
            "/var/lib/ovl/controller.redb"
        ]
    );

    // --purge removes everything, down to the directories the install created.
    install_ok(&["--destdir", dest, "--uninstall", "--purge"]);
    assert!(
        !root.exists() || tree(&root).is_empty(),
        "left behind: {:#?}",
        tree(&root)
    );
}

#[test]
fn a_clean_install_uninstalls_to_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let dest = root.to_str().unwrap();
    install_ok(&["--destdir", dest]);
    let said = install_ok(&["--destdir", dest, "--uninstall"]);
    assert!(!said.contains("ovl-agent cleanup"), "{said}");
    assert!(tree(&root).is_empty(), "left behind: {:#?}", tree(&root));
}

/// `--uninstall --purge` of the agent role runs the installed agent's cleanup before the
/// binaries go; in a scratch root it only says so (the data plane is the machine's).
#[test]
fn a_purge_cleans_the_data_plane_with_the_installed_agent() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let dest = root.to_str().unwrap();
    install_ok(&["--destdir", dest, "--role", "agent"]);
    let said = install_ok(&[
        "--destdir",
        dest,
        "--role",
        "agent",
        "--uninstall",
        "--purge",
    ]);
    assert!(
        said.contains("would run /usr/local/bin/ovl-agent cleanup"),
        "{said}"
    );
    assert!(tree(&root).is_empty(), "left behind: {:#?}", tree(&root));
    // The controller role has no data plane to clean.
    install_ok(&["--destdir", dest, "--role", "controller"]);
    let said = install_ok(&[
        "--destdir",
        dest,
        "--role",
        "controller",
        "--uninstall",
        "--purge",
    ]);
    assert!(!said.contains("ovl-agent cleanup"), "{said}");
}

#[test]
fn roles_install_only_their_part() {
    let scratch = tempfile::tempdir().unwrap();
    let agent = scratch.path().join("agent");
    install_ok(&["--destdir", agent.to_str().unwrap(), "--role", "agent"]);
    assert_layout(&agent, &[AGENT]);
    let installed = tree(&agent);
    for absent in ["/etc/ovl/pki/", "/var/lib/ovl/"] {
        assert!(
            !installed.contains_key(absent),
            "{absent} in an agent install"
        );
    }

    let controller = scratch.path().join("controller");
    install_ok(&[
        "--destdir",
        controller.to_str().unwrap(),
        "--role",
        "controller",
    ]);
    assert_layout(&controller, &[CONTROLLER]);
    let installed = tree(&controller);
    for absent in ["/etc/ovl/host/", "/var/lib/ovl-agent/"] {
        assert!(
            !installed.contains_key(absent),
            "{absent} in a controller install"
        );
    }
    // Uninstalling one role leaves the other's files alone.
    install_ok(&[
        "--destdir",
        controller.to_str().unwrap(),
        "--role",
        "agent",
        "--uninstall",
    ]);
    assert!(tree(&controller).contains_key("/usr/local/bin/ovl-controller"));
}

#[test]
fn the_cni_plugin_goes_where_the_runtimes_look() {
    let scratch = tempfile::tempdir().unwrap();
    // A Debian target: its containernetworking-plugins, podman and containerd use /usr/lib/cni.
    let debian = scratch.path().join("debian");
    std::fs::create_dir_all(debian.join("usr/lib/cni")).unwrap();
    std::fs::write(debian.join("usr/lib/cni/bridge"), "another plugin").unwrap();
    let dest = debian.to_str().unwrap();
    let said = install_ok(&["--destdir", dest, "--role", "agent"]);
    assert!(said.contains("cni: /usr/lib/cni/ovl"), "{said}");
    assert!(root_has(&debian, "usr/lib/cni/ovl-cni") && root_has(&debian, "usr/lib/cni/ovl"));
    assert!(!debian.join("opt").exists());
    install_ok(&["--destdir", dest, "--role", "agent", "--uninstall"]);
    assert_eq!(
        files(&debian),
        ["/usr/lib/cni/bridge"],
        "only ours is removed"
    );

    // An explicit directory; a plugin named `ovl` that is not ours is kept.
    let other = scratch.path().join("other");
    std::fs::create_dir_all(other.join("srv/cni")).unwrap();
    std::fs::write(other.join("srv/cni/ovl"), "someone else's ovl").unwrap();
    let dest = other.to_str().unwrap();
    let said = install_ok(&[
        "--destdir",
        dest,
        "--role",
        "agent",
        "--cni-dir",
        "/srv/cni",
    ]);
    assert!(
        said.contains("kept /srv/cni/ovl, which is not ours"),
        "{said}"
    );
    assert!(root_has(&other, "srv/cni/ovl-cni"));
    assert_eq!(
        std::fs::read_to_string(other.join("srv/cni/ovl")).unwrap(),
        "someone else's ovl"
    );
    install_ok(&[
        "--destdir",
        dest,
        "--role",
        "agent",
        "--uninstall",
        "--cni-dir",
        "/srv/cni",
    ]);
    assert_eq!(files(&other), ["/srv/cni/ovl"]);

    let out = install(&["--destdir", dest, "--cni-dir", "cni"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cni-dir must be an absolute path"));
}

fn root_has(root: &Path, path: &str) -> bool {
    root.join(path).is_file()
}

#[test]
fn bad_invocations_are_refused_without_touching_anything() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let dest = root.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--destdir", "relative/root"], "absolute path"),
        (&["--destdir", dest, "--start"], "--start cannot be used"),
        (&["--destdir", dest, "--role", "router"], "--role must be"),
        (&["--destdir", dest, "--purge"], "--purge only goes with"),
        (&["--destdir", dest, "--frobnicate"], "unknown argument"),
    ];
    for (args, says) in cases {
        let out = install(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Binaries that were not built.
    let out = Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .args(["--bin-dir", "/nonexistent", "--destdir", dest])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo build --release"));
    assert!(
        !root.exists(),
        "a refused install created {}",
        root.display()
    );
}

/// `KEY=VALUE` lines of a unit file's [Service] section (later lines win).
fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

#[test]
fn units_and_sample_configs_agree() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let agent = unit_keys(&read("deploy/systemd/ovl-agent.service"));
    let controller = unit_keys(&read("deploy/systemd/ovl-controller.service"));

    // ExecStart runs the installed binary, with the sample config's path.
    assert!(agent["ExecStart"][0]
        .starts_with("/usr/local/bin/ovl-agent run --config /etc/ovl/agent.toml"));
    assert!(controller["ExecStart"][0].starts_with("/usr/local/bin/ovl-controller run"));
    assert_eq!(agent["Type"], ["notify"]);
    assert_eq!(controller["Type"], ["notify"]);
    // Both feed a watchdog (the daemons send WATCHDOG=1 at half of it).
    assert_eq!(agent["WatchdogSec"], ["30s"]);
    assert_eq!(controller["WatchdogSec"], ["30s"]);
    assert!(agent["Requires"].contains(&"openvswitch-switch.service".to_string()));
    assert!(agent["After"].contains(&"openvswitch-switch.service".to_string()));
    assert_eq!(
        agent["CapabilityBoundingSet"],
        ["CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_SYS_CHROOT"]
    );
    assert_eq!(controller["CapabilityBoundingSet"], [""]);
    assert_eq!(controller["User"], ["ovl"]);
    // A misconfigured agent exits 78, and systemd does not restart it for that.
    assert_eq!(agent["RestartPreventExitStatus"], ["78"]);
    for unit in [&agent, &controller] {
        assert_eq!(unit["ProtectSystem"], ["strict"]);
        assert_eq!(unit["NoNewPrivileges"], ["yes"]);
        assert_eq!(unit["ProtectHome"], ["yes"]);
        assert_eq!(unit["PrivateTmp"], ["yes"]);
    }

    // The sample agent config parses as the agent reads it, commented-out keys included, and
    // its state directory is the one the unit makes writable.
    let sample = repo().join("deploy/config/agent.toml");
    let f = FileConfig::load(&sample).expect("the sample agent.toml parses");
    assert_eq!(f.credentials, Some(PathBuf::from("/etc/ovl/host")));
    assert_eq!(
        f.state_dir,
        Some(PathBuf::from("/var/lib/").join(&agent["StateDirectory"][0]))
    );
    let uncommented: String = read("deploy/config/agent.toml")
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("agent.toml");
    std::fs::write(&all, &uncommented).unwrap();
    let f = FileConfig::load(&all).expect("every documented key is one the agent accepts");
    assert!(f.controller.is_some() && f.underlay_ip.is_some() && f.uplink.is_some());

    // Every OVL_* setting in controller.env is an environment variable `ovl-controller run`
    // reads (or the extra-flags variable the unit expands), and the database lives in the
    // unit's state directory.
    let help = Command::new(ovl_tests::bin("ovl-controller"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let env = read("deploy/config/controller.env");
    let vars: BTreeMap<&str, &str> = env
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once('=').expect("KEY=VALUE"))
        .collect();
    for var in vars.keys() {
        match *var {
            "OVL_LOG" => {}
            "OVL_CONTROLLER_ARGS" => {
                assert!(controller["ExecStart"][0].contains("$OVL_CONTROLLER_ARGS"))
            }
            v => assert!(
                help.contains(&format!("env: {v}=")),
                "{v} is not a flag's env"
            ),
        }
    }
    assert!(vars["OVL_DB"].starts_with(&format!("/var/lib/{}/", controller["StateDirectory"][0])));
    assert_eq!(vars["OVL_PKI"], "/etc/ovl/pki");
}

/// Kills the process on drop.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

#[test]
fn the_agent_tells_systemd_it_is_ready_after_its_first_sync_only() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    let mut c = Cluster::new();
    let creds = c.issue_host("h1");
    let socket_path = c.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let log = c.path().join("agent.log");
    let _agent = Reaper(
        Command::new(ovl_tests::bin("ovl-agent"))
            .args([
                "run",
                "--config",
                "/nonexistent/agent.toml",
                "--driver",
                "fake",
            ])
            .arg("--controller")
            .arg(c.addr.to_string())
            .arg("--credentials")
            .arg(&creds)
            .args(["--underlay-ip", "198.51.100.1", "--state-dir"])
            .arg(c.path().join("state"))
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ovl-agent"),
    );

    // No controller yet, so no first sync, so not ready.
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        socket.recv(&mut buf).is_err(),
        "the agent said it was ready before any intent arrived"
    );

    c.start_controller();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = socket.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no readiness notification ({e}); agent log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(msg.contains("STATUS=generation "), "{msg}");
    c.wait_converged(&["h1"]);
}

/// The controller says it is ready once it listens, then feeds the watchdog at half the
/// interval systemd gives it; the agent feeds it too.
#[test]
fn the_daemons_tell_systemd_they_are_ready_and_feed_its_watchdog() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    let c = Cluster::new();
    let recv = |socket: &UnixDatagram, within: Duration| {
        socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let socket_path = c.path().join("controller-notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let _controller = Reaper(
        Command::new(ovl_tests::bin("ovl-controller"))
            .args(["run", "--pki"])
            .arg(&c.pki)
            .args(c.store_args())
            .arg("--listen")
            .arg(c.addr.to_string())
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "400000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ovl-controller"),
    );
    let ready = recv(&socket, Duration::from_secs(30));
    assert!(
        ready.starts_with("READY=1\nSTATUS=listening on "),
        "{ready}"
    );
    // Fed at half of the 400 ms asked for: three within a second.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(recv(&socket, Duration::from_secs(2)), "WATCHDOG=1");
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The agent feeds it from its start, before its first sync (its READY comes after).
    let creds = c.issue_host("h1");
    let agent_path = c.path().join("agent-notify.sock");
    let agent_socket = UnixDatagram::bind(&agent_path).unwrap();
    let _agent = Reaper(
        Command::new(ovl_tests::bin("ovl-agent"))
            .args([
                "run",
                "--config",
                "/nonexistent/agent.toml",
                "--driver",
                "fake",
            ])
            .arg("--controller")
            .arg("127.0.0.1:9")
            .arg("--credentials")
            .arg(&creds)
            .args(["--underlay-ip", "198.51.100.1", "--state-dir"])
            .arg(c.path().join("state"))
            .env("NOTIFY_SOCKET", &agent_path)
            .env("WATCHDOG_USEC", "400000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ovl-agent"),
    );
    assert_eq!(recv(&agent_socket, Duration::from_secs(10)), "WATCHDOG=1");
}

#[test]
fn a_misconfigured_agent_exits_with_ex_config_and_says_why() {
    let run = |args: &[&str]| {
        Command::new(ovl_tests::bin("ovl-agent"))
            .args(["run", "--config", "/nonexistent/agent.toml"])
            .args(args)
            .output()
            .expect("run ovl-agent")
    };
    let no_controller = run(&[]);
    assert_eq!(no_controller.status.code(), Some(78), "{no_controller:?}");
    let err = String::from_utf8_lossy(&no_controller.stderr);
    assert!(
        err.contains("misconfigured") && err.contains("--controller"),
        "{err}"
    );
    let no_credentials = run(&[
        "--controller",
        "127.0.0.1:9",
        "--credentials",
        "/nonexistent/host",
    ]);
    assert_eq!(no_credentials.status.code(), Some(78), "{no_credentials:?}");
    let err = String::from_utf8_lossy(&no_credentials.stderr);
    assert!(err.contains("/nonexistent/host"), "{err}");
}
