//! `ovl-controller check`, `backup` and `restore` (issue 13, item 4), as real processes:
//!
//! - [`a_redb_store_is_backed_up_and_restored`]: check and backup of a redb file a running
//!   controller holds go through that controller (`--controller`: a snapshot in parts, the
//!   same bytes as the stopped store's backup; a host's certificate refused), and read the
//!   file once it stopped; the restored file holds exactly what the store held; a backup cut short, and a restore over an existing store, are refused; a
//!   controller on the restored file serves it.
//! - [`a_backup_moves_a_store_between_redb_and_etcd`]: a running etcd-backed controller's
//!   backup restored into a redb file, and that into another etcd prefix, row for row equal.

use std::path::Path;
use std::process::{Command, Output};

use ovl_controller::store::{EtcdOptions, EtcdStore, RedbReader, Store};
use ovl_tests::bin;
use ovl_tests::cluster::{Cluster, StoreKind};

fn controller(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin("ovl-controller"))
        .args(args)
        .output()
        .expect("run ovl-controller")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn populate(c: &mut Cluster) {
    c.start_controller();
    c.start_fake_agent("h1", "192.168.70.1");
    c.start_fake_agent("h2", "192.168.70.2");
    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.60.0.0/24"]);
    c.ovl_json(&[
        "tenant",
        "create",
        "red",
        "--subnet",
        "10.61.0.0/24",
        "--type",
        "gre",
    ]);
    for (t, h, n) in [
        ("blue", "h1", "b1"),
        ("blue", "h2", "b2"),
        ("red", "h2", "r1"),
    ] {
        c.ovl_json(&[
            "endpoint", "create", t, "--host", h, "--name", n, "--netns", n,
        ]);
    }
    c.wait_converged(&["h1", "h2"]);
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn a_redb_store_is_backed_up_and_restored() {
    let mut c = Cluster::with_store(StoreKind::Redb);
    populate(&mut c);
    let db = c.db.clone();
    let file = c.path().join("store.backup");
    let backup = |file: &Path| {
        controller(&[
            os("backup"),
            os("--out"),
            file.as_os_str(),
            os("--db"),
            db.as_os_str(),
        ])
    };

    // While the controller holds the file, the tools ask it (--controller) for a snapshot.
    let addr = c.addr.to_string();
    let live = c.path().join("live.backup");
    let out = controller(&[
        os("backup"),
        os("--out"),
        live.as_os_str(),
        os("--db"),
        db.as_os_str(),
        os("--controller"),
        os(&addr),
        os("--pki"),
        c.pki.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "backup of a running controller: {}",
        text(&out)
    );
    let out = controller(&[
        os("check"),
        os("--controller"),
        os(&addr),
        os("--pki"),
        c.pki.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "check of a running controller: {}",
        text(&out)
    );
    assert!(text(&out).contains("consistent"), "{}", text(&out));
    // Without --controller, a held file is asked of the controller on this machine (none
    // answers on 127.0.0.1:7300 here): said so, and nothing is written.
    let out = backup(&file);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("held by a running controller")
            && text(&out).contains("127.0.0.1:7300"),
        "{}",
        text(&out)
    );
    assert!(!file.exists());
    // A host's certificate does not get the store (refused at the session; in the host role,
    // by the request's authorisation: `only_an_administrator_gets_a_backup`).
    let stolen = c.path().join("stolen.backup");
    let out = controller(&[
        os("backup"),
        os("--out"),
        stolen.as_os_str(),
        os("--controller"),
        os(&addr),
        os("--credentials"),
        c.pki.join("hosts").join("h1").as_os_str(),
    ]);
    assert!(!out.status.success(), "a host got a backup: {}", text(&out));
    assert!(
        text(&out).contains("not allowed to call the admin API"),
        "{}",
        text(&out)
    );
    assert!(!stolen.exists());

    c.stop_controller();
    let out = controller(&[os("check"), os("--db"), db.as_os_str()]);
    assert!(out.status.success(), "check: {}", text(&out));
    assert!(text(&out).contains("consistent"), "{}", text(&out));
    let out = backup(&file);
    assert!(out.status.success(), "backup: {}", text(&out));
    assert!(
        text(&out).contains("rows at store revision"),
        "{}",
        text(&out)
    );
    let want = RedbReader::open(&db).unwrap().dump().unwrap();
    // Nothing changed after the live backup: it is the same file as the stopped store's.
    assert_eq!(
        std::fs::read(&live).unwrap(),
        std::fs::read(&file).unwrap(),
        "the running controller's snapshot differs from the stopped store's backup"
    );

    let restored = c.path().join("restored.redb");
    let out = controller(&[
        os("restore"),
        file.as_os_str(),
        os("--db"),
        restored.as_os_str(),
    ]);
    assert!(out.status.success(), "restore: {}", text(&out));
    assert!(text(&out).contains("consistent"), "{}", text(&out));
    assert_eq!(RedbReader::open(&restored).unwrap().dump().unwrap(), want);

    // Not over an existing store without --force; with it, yes.
    let out = controller(&[
        os("restore"),
        file.as_os_str(),
        os("--db"),
        restored.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let out = controller(&[
        os("restore"),
        file.as_os_str(),
        os("--db"),
        restored.as_os_str(),
        os("--force"),
    ]);
    assert!(out.status.success(), "restore --force: {}", text(&out));

    // A backup cut short is refused, and nothing is written.
    let whole = std::fs::read_to_string(&file).unwrap();
    let cut: Vec<&str> = whole.lines().collect();
    let short = c.path().join("short.backup");
    std::fs::write(&short, cut[..cut.len() - 1].join("\n")).unwrap();
    let elsewhere = c.path().join("from-short.redb");
    let out = controller(&[
        os("restore"),
        short.as_os_str(),
        os("--db"),
        elsewhere.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("cut short"), "{}", text(&out));
    assert!(!elsewhere.exists(), "a refused restore left a file");

    // The restored store serves: a controller on it lists what was there.
    c.db = restored;
    c.start_controller();
    let list = c.ovl_json(&["endpoint", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
}

#[test]
#[ignore = "privileged: starts etcd and a controller; run with --run-ignored all"]
fn a_backup_moves_a_store_between_redb_and_etcd() {
    let mut c = Cluster::with_store(StoreKind::Etcd);
    populate(&mut c);
    let file = c.path().join("etcd.backup");
    let mut args: Vec<std::ffi::OsString> =
        vec!["backup".into(), "--out".into(), file.clone().into()];
    args.extend(c.store_args());
    let out = Command::new(bin("ovl-controller"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "backup from etcd: {}", text(&out));
    let etcd = c.etcd.as_ref().unwrap();
    let options = |prefix: &str| EtcdOptions {
        etcd: etcd.settings(),
        prefix: prefix.into(),
    };
    let want = EtcdStore::open_existing(&options("/ovl/"))
        .unwrap()
        .dump()
        .unwrap();

    // etcd → redb.
    let redb = c.path().join("from-etcd.redb");
    restore(&file, &[os("--db"), redb.as_os_str()]);
    assert_eq!(RedbReader::open(&redb).unwrap().dump().unwrap(), want);

    // redb → another etcd prefix, through a backup of the redb file.
    let again = c.path().join("redb.backup");
    let out = controller(&[
        os("backup"),
        os("--out"),
        again.as_os_str(),
        os("--db"),
        redb.as_os_str(),
    ]);
    assert!(out.status.success(), "backup from redb: {}", text(&out));
    let store_args = c.store_args();
    let mut etcd_args: Vec<&std::ffi::OsStr> = store_args
        .iter()
        .take_while(|a| a.to_str() != Some("--db"))
        .map(|a| a.as_os_str())
        .collect();
    etcd_args.extend([os("--etcd-prefix"), os("/copy/")]);
    restore(&again, &etcd_args);
    assert_eq!(
        EtcdStore::open_existing(&options("/copy/"))
            .unwrap()
            .dump()
            .unwrap(),
        want
    );
}

fn restore(file: &Path, store: &[&std::ffi::OsStr]) {
    let mut args = vec![os("restore"), file.as_os_str()];
    args.extend_from_slice(store);
    let out = controller(&args);
    assert!(out.status.success(), "restore {store:?}: {}", text(&out));
}
