//! ovl as a Docker network, end to end: a real `dockerd` on each host of a two-host lab
//! ([`ovl_tests::docker`]), containers on Docker networks bound to ovl tenants through the
//! `ovl-docker` driver, and containers attached by hand with `ovl endpoint create --docker`.
//!
//! Checked: addresses (and MACs) agree between Docker and ovl and follow `docker run --ip`;
//! containers on two hosts reach each other, and two tenants stay apart even with the same
//! subnet; `docker network connect`/`disconnect`, `docker rm` and `docker network rm` leave
//! nothing behind (OVS rows, veths, endpoints, reserved addresses); `docker restart` on either
//! side brings replies back within 2 s, for driver-made and hand-made endpoints alike, and
//! `ovl endpoint list` never calls an endpoint `ok` while its container is down; `docker stop`
//! of a hand-attached container shows `target-missing` and `docker start` brings it back;
//! restarts of `dockerd` (`--live-restore`) and of `ovl-docker` keep running containers
//! connected. Outages are measured with a ping every 20 ms from the other host and printed as
//! `FIGURE` lines.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use ovl_tests::docker::{unix_now, wait_until, DockerHost, DockerLab, PingTrace, Pinger};
use serde_json::Value;

/// How fast replies must come back after `docker restart` (or `docker start`) returns.
const RESTORE: Duration = Duration::from_secs(2);

/// How long after a container goes down its endpoint may still read `ok`: the agent notices
/// within 1 s, then reports to the controller, which the CLI asks.
const NOTICE_GRACE: f64 = 1.5;

/// How long before traffic flows again an endpoint may read `ok`: the first frames through a
/// re-plumbed interface can be lost while ovs-vswitchd takes the new device, and the kernel
/// repeats an unanswered ARP request after 1 s.
const OK_SLACK: f64 = 1.1;

/// The interval of the pings that measure outages.
const PING_EVERY: Duration = Duration::from_millis(20);

/// Bound on waits for an endpoint to appear, settle or go.
const SETTLE: Duration = Duration::from_secs(30);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// `ovl tenant create NAME --subnet SUBNET --attachable`: hosts may attach their own
/// containers (the Docker driver acts with its host's certificate).
fn attachable_tenant(dl: &DockerLab, name: &str, subnet: &str) {
    dl.ovl_json(&["tenant", "create", name, "--subnet", subnet, "--attachable"]);
}

/// The state `ovl endpoint list` shows for the endpoint of `tenant` holding `addr`; `None`
/// when there is no such endpoint.
fn state_of(dl: &DockerLab, tenant: &str, addr: Ipv4Addr) -> Option<String> {
    dl.endpoint_with_ip(tenant, addr)
        .and_then(|e| e["state"].as_str().map(str::to_string))
}

/// Waits until the endpoint of `tenant` holding `addr` is `ok`; returns it.
async fn wait_ok_at(dl: &DockerLab, tenant: &str, addr: Ipv4Addr) -> Value {
    dl.wait_endpoint(&format!("of {tenant} at {addr} in state ok"), SETTLE, |e| {
        e["tenant"] == tenant && e["ip"] == addr.to_string() && e["state"] == "ok"
    })
    .await
}

/// Asserts that `from` (a container on `host`) gets every one of 3 pings to `to` answered.
fn assert_reaches(host: &DockerHost, from: &str, to: Ipv4Addr) {
    // The first ping may spend its time on ARP and MAC learning.
    let _ = host.ping_until_reply(from, to, Duration::from_secs(5));
    let r = host.ping(from, to, 3);
    assert_eq!(r.received, 3, "{from} on {} -> {to}: {r:?}", host.name);
}

/// Asserts that none of 3 pings from `from` (on `host`) to `to` is answered.
fn assert_cannot_reach(host: &DockerHost, from: &str, to: Ipv4Addr) {
    let r = host.ping(from, to, 3);
    assert_eq!(
        r.sent, 3,
        "{from} on {} did not ping {to}: {r:?}",
        host.name
    );
    assert_eq!(
        r.received, 0,
        "{from} on {} reached {to}, which it must not: {r:?}",
        host.name
    );
}

/// What one container outage looked like.
struct Outage {
    /// When the command that took the container down was started and when it returned.
    started: f64,
    returned: f64,
    trace: PingTrace,
    /// `(unix time, state)` of the watched endpoint, sampled while it was down and after.
    samples: Vec<(f64, Option<String>)>,
}

impl Outage {
    /// The states sampled, in order, each run of equal states once (`-`: no endpoint).
    fn states_seen(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for (_, st) in &self.samples {
            let st = st.as_deref().unwrap_or("-");
            if seen.last() != Some(&st) {
                seen.push(st);
            }
        }
        seen.join(" → ")
    }

    /// Asserts that `ovl endpoint list` never read `ok` during the outage except within the
    /// allowed slack of traffic: at most [`NOTICE_GRACE`] after the last reply (the agent had
    /// not noticed yet) or at most [`OK_SLACK`] before the next one (the first frames of a
    /// re-plumbed interface may be lost, and ARP retries after 1 s). Returns how many samples
    /// were taken while no reply came, and how many of those read `ok` within the slack.
    fn assert_never_ok_while_down(&self, what: &str, end: f64) -> (usize, usize) {
        let (mut down, mut excused) = (0, 0);
        for (t, state) in &self.samples {
            let since = t - self.trace.last_reply_before(*t).unwrap_or(self.started);
            let until = self.trace.first_reply_after(*t).unwrap_or(end + OK_SLACK) - t;
            // A reply within one ping interval either side: traffic was flowing.
            let flowing = PING_EVERY.as_secs_f64() * 3.0;
            if since < flowing || until < flowing {
                continue;
            }
            down += 1;
            if state.as_deref() != Some("ok") {
                continue;
            }
            assert!(
                since < NOTICE_GRACE || until < OK_SLACK,
                "{what}: ovl endpoint list said ok at {t:.3}, {since:.3} s after the last reply \
                 and {until:.3} s before the next; {}",
                self.timeline()
            );
            excused += 1;
        }
        (down, excused)
    }

    /// When the endpoint turned `ok` again after reading something else during the outage:
    /// seconds from the first sample that read `ok` to the first reply after the last sample
    /// that did not (negative: replies came before `ok` was seen). `None` when the samples
    /// never left `ok` or no reply came. A figure, not a check: a restarted Docker container
    /// has a new MAC, and replies wait for its peer to learn it, which ovl's `ok` does not
    /// cover.
    fn ok_to_reply(&self) -> Option<f64> {
        let i = self
            .samples
            .windows(2)
            .rposition(|w| w[0].1.as_deref() != Some("ok") && w[1].1.as_deref() == Some("ok"))?;
        let (before, ok_at) = (self.samples[i].0, self.samples[i + 1].0);
        Some(self.trace.first_reply_after(before)? - ok_at)
    }

    /// The action's times and every sample, for failure messages.
    fn timeline(&self) -> String {
        let samples: Vec<String> = self
            .samples
            .iter()
            .map(|(t, s)| format!("{t:.3} {}", s.as_deref().unwrap_or("-")))
            .collect();
        format!(
            "action from {:.3} to {:.3}; last reply before {:?}, first after {:?}; \
             endpoint samples {samples:?}",
            self.started,
            self.returned,
            self.trace.last_reply_before(self.returned),
            self.trace.first_reply_after(self.returned)
        )
    }
}

/// How an outage of the container at `addr` is watched: pings from `from` (a container on
/// `from_host`, on the other side) and the state of the endpoint of `tenant` holding `addr`.
struct Watch<'a> {
    from_host: &'a DockerHost,
    from: &'a str,
    tenant: &'a str,
    addr: Ipv4Addr,
}

/// Runs `act` (which takes the watched container down and, for a restart, up again) while
/// the other side pings it every [`PING_EVERY`] and `ovl endpoint list` is sampled for its
/// endpoint, from before `act` until `linger` after it returned.
/// `docker stop NAME` on `host` while `w` watches: no status sample says `ok` past the grace,
/// there was at least one sample, and no reply came while it was stopped. Prints the figures
/// under `label` and returns the outage.
fn stopped(
    dl: &DockerLab,
    w: &Watch,
    linger: Duration,
    host: &DockerHost,
    name: &str,
    label: &str,
) -> Outage {
    let o = outage(dl, w, linger, || host.stop(name));
    let end = unix_now();
    let (checked, excused) = o.assert_never_ok_while_down(label, end);
    assert!(checked > 0, "no status sample while {name} was stopped");
    eprintln!(
        "FIGURE {label}: {checked} status samples while down, {excused} ok (all within \
         {NOTICE_GRACE} s of the stop); states {}",
        o.states_seen()
    );
    assert_eq!(
        o.trace.replies_between(o.returned + 0.1, end),
        0,
        "{name} answered while stopped"
    );
    o
}

fn outage(dl: &DockerLab, w: &Watch, linger: Duration, act: impl FnOnce() + Send) -> Outage {
    let (tenant, addr) = (w.tenant, w.addr);
    let pinger = Pinger::start(&w.from_host.netns_path(w.from), addr, PING_EVERY);
    std::thread::sleep(Duration::from_millis(500));
    let (started, returned, samples) = std::thread::scope(|s| {
        let acting = s.spawn(move || {
            let t = unix_now();
            act();
            (t, unix_now())
        });
        let mut samples = Vec::new();
        let mut returned_at: Option<Instant> = None;
        while returned_at.is_none_or(|r| r.elapsed() < linger) {
            let before = unix_now();
            let state = state_of(dl, tenant, addr);
            samples.push(((before + unix_now()) / 2.0, state));
            if acting.is_finished() && returned_at.is_none() {
                returned_at = Some(Instant::now());
            }
        }
        let (started, returned) = acting.join().expect("the action panicked");
        (started, returned, samples)
    });
    let trace = pinger.stop();
    assert!(
        trace.replies_between(started - 0.5, started) > 0,
        "no replies from {addr} even before the outage: the measurement is broken"
    );
    Outage {
        started,
        returned,
        trace,
        samples,
    }
}

/// `docker restart` of `container` on `host` (the one at `w.addr`), watched as `w` says;
/// asserts replies return within [`RESTORE`] of the command returning and that the endpoint
/// is never `ok` while traffic cannot pass. `label` names the case in the printed figure.
fn restart_measured(dl: &DockerLab, host: &DockerHost, container: &str, w: &Watch, label: &str) {
    let addr = w.addr;
    let o = outage(dl, w, RESTORE + Duration::from_secs(1), || {
        host.restart(container);
    });
    let end = unix_now();
    let back = o.trace.first_reply_after(o.returned);
    let gap = o.trace.longest_gap(o.started - 0.5, back.unwrap_or(end));
    let (down, excused) = o.assert_never_ok_while_down(label, end);
    let ok_lag = o.ok_to_reply();
    eprintln!(
        "FIGURE {label}: docker restart took {:.3} s; replies back {} after it returned; \
         longest gap between replies {:.3} s; {down} status samples while down, {excused} ok \
         within the slack; \
         {}/{} replies; states {}; first reply after ok again: {}",
        o.returned - o.started,
        back.map(|b| format!("{:.3} s", b - o.returned))
            .unwrap_or_else(|| "NEVER".into()),
        gap.as_secs_f64(),
        o.trace.replies.len(),
        o.trace.sent,
        o.states_seen(),
        ok_lag
            .map(|l| format!("{l:+.3} s"))
            .unwrap_or_else(|| "n/a (ok throughout)".into())
    );
    let slow = back.is_none_or(|b| b - o.returned >= RESTORE.as_secs_f64());
    assert!(
        !slow,
        "{label}: replies from {addr} came back {} after docker restart returned (bound \
         {RESTORE:?}); {}\n{}",
        back.map(|b| format!("{:.3} s", b - o.returned))
            .unwrap_or_else(|| format!("not within {:.1} s", end - o.returned)),
        o.timeline(),
        dl.logs(&host.name)
    );
}

/// Waits until no endpoint of `tenant` holds `addr` (after `what`).
async fn wait_for_no_endpoint(dl: &DockerLab, tenant: &str, addr: Ipv4Addr, what: &str) {
    wait_until(
        &format!("the endpoint at {addr} goes after {what}"),
        SETTLE,
        || match dl.endpoint_with_ip(tenant, addr) {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        },
    )
    .await
}

/// Restarts the engine on `host` (which runs the container at `w.addr`) while the other
/// side pings; asserts traffic goes on (`--live-restore`) and the endpoint stays `ok`.
fn dockerd_restart_measured(dl: &DockerLab, host: &DockerHost, w: &Watch) {
    let pinger = Pinger::start(&w.from_host.netns_path(w.from), w.addr, PING_EVERY);
    std::thread::sleep(Duration::from_millis(500));
    let from = unix_now();
    let took = host.restart_dockerd();
    std::thread::sleep(Duration::from_secs(1));
    let to = unix_now();
    let trace = pinger.stop();
    let gap = trace.longest_gap(from, to);
    eprintln!(
        "FIGURE dockerd restart on {} ({}): engine back in {took:?}; longest gap between \
         replies {gap:?}; {}/{} replies",
        host.name,
        w.tenant,
        trace.replies.len(),
        trace.sent
    );
    assert!(
        gap < Duration::from_secs(1),
        "traffic to {} stopped for {gap:?} across a dockerd restart on {}",
        w.addr,
        host.name
    );
    assert_eq!(
        state_of(dl, w.tenant, w.addr).as_deref(),
        Some("ok"),
        "the endpoint at {} after the dockerd restart on {}",
        w.addr,
        host.name
    );
}

/// Every owned OVS interface, endpoint veth and endpoint is gone from every host; waits for
/// the agents to finish.
async fn assert_all_gone(dl: &DockerLab, what: &str) {
    wait_until(&format!("{what} leaves nothing behind"), SETTLE, || {
        dl.lab.leftovers()
    })
    .await
}

/// The host and OVS port (also the host end's veth) of endpoint `e` (an `ovl endpoint list`
/// object), and the container end's name while it is still in the host's namespace.
fn plumbing(e: &Value) -> (String, String, String) {
    let host = e["host"].as_str().expect("endpoint host").to_string();
    let id = e["id"].as_u64().expect("endpoint id");
    (host, format!("ovl-e{id:x}"), format!("ovl-c{id:x}"))
}

/// Asserts that endpoint `e` has its OVS interface and host-side veth, so that checking
/// later that they are gone means something.
fn assert_endpoint_plugged(dl: &DockerLab, e: &Value) {
    let (host, port, _) = plumbing(e);
    let rows = dl.owned_interfaces(&host);
    let links = dl.endpoint_links(&host);
    assert!(
        rows.contains(&port) && links.contains(&port),
        "endpoint {} should have {port} on {host}: OVS interfaces {rows:?}, veths {links:?}",
        e["name"]
    );
}

/// Waits until endpoint `e` has neither an OVS interface nor a veth on its host.
async fn assert_endpoint_unplugged(dl: &DockerLab, e: &Value, what: &str) {
    let (host, port, peer) = plumbing(e);
    wait_until(&format!("{what} unplugs {port} on {host}"), SETTLE, || {
        let rows = dl.owned_interfaces(&host);
        let links = dl.endpoint_links(&host);
        if rows.contains(&port) || links.contains(&port) || links.contains(&peer) {
            Err(format!("OVS interfaces {rows:?}, veths {links:?}"))
        } else {
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, dockerd and busybox-static"]
async fn docker_networks_address_connect_isolate_and_clean_up() {
    let dl = DockerLab::up("ovldk1", 88, 7312, 2).await;
    let (h1, h2) = (dl.host("h1"), dl.host("h2"));
    // blue and pink share a subnet, so only the tenants' L2 isolation keeps them apart; red
    // has its own.
    let blue_net: Ipv4Network = "10.41.0.0/24".parse().unwrap();
    let red_net: Ipv4Network = "10.42.0.0/24".parse().unwrap();
    for (t, net) in [("blue", blue_net), ("pink", blue_net), ("red", red_net)] {
        attachable_tenant(&dl, t, &net.to_string());
    }
    // Docker takes `--ip` only on networks created with `--subnet` (the tenant's, then); red
    // leaves the subnet to the driver. Docker tells the network driver only `-o` options, so
    // a second network with blue's subnet names its tenant with `-o` too.
    let subnet = blue_net.to_string();
    for h in [h1, h2] {
        h.network_create("blue", "blue", &["--subnet", &subnet]);
        h.network_create(
            "pink",
            "pink",
            &["--subnet", &subnet, "-o", "ovl.tenant=pink"],
        );
        h.network_create("red", "red", &[]);
    }

    // Containers on both hosts and all networks; some addresses asked for with --ip.
    let fixed = ip("10.41.0.50");
    let (p1, p2) = (ip("10.41.0.98"), ip("10.41.0.99"));
    h1.run("b1", &["--network", "blue"]);
    h2.run("b2", &["--network", "blue", "--ip", &fixed.to_string()]);
    h1.run("p1", &["--network", "pink", "--ip", &p1.to_string()]);
    h2.run("p2", &["--network", "pink", "--ip", &p2.to_string()]);
    h1.run("r1", &["--network", "red"]);
    h2.run("r2", &["--network", "red"]);
    let placed = [
        (h1, "b1", "blue", blue_net),
        (h2, "b2", "blue", blue_net),
        (h1, "p1", "pink", blue_net),
        (h2, "p2", "pink", blue_net),
        (h1, "r1", "red", red_net),
        (h2, "r2", "red", red_net),
    ];

    // Docker and ovl agree on each address (and MAC); it is in the tenant's subnet, unique
    // in the tenant, on the right host; --ip was honoured.
    let mut addrs = std::collections::BTreeMap::new();
    for (h, c, t, subnet) in placed {
        let a = h
            .ip(c, t)
            .unwrap_or_else(|| panic!("docker inspect shows no address for {c} on {t}"));
        assert!(subnet.contains(a), "{c} got {a}, outside {t}'s {subnet}");
        let e = wait_ok_at(&dl, t, a).await;
        assert_eq!(
            e["host"], h.name,
            "{c}'s endpoint is on the wrong host: {e}"
        );
        let mac = h.inspect(c)["NetworkSettings"]["Networks"][t]["MacAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(e["mac"], mac, "{c}: Docker and ovl disagree on the MAC");
        eprintln!(
            "{c} on {}: {t} {a} mac {mac}, ovl endpoint {}",
            h.name, e["name"]
        );
        if let Some(other) = addrs.insert((t, a), c) {
            panic!("{a} of {t} was given to {c} and to {other}");
        }
    }
    for (h, c, t, a) in [
        (h2, "b2", "blue", fixed),
        (h1, "p1", "pink", p1),
        (h2, "p2", "pink", p2),
    ] {
        assert_eq!(
            h.ip(c, t),
            Some(a),
            "docker run --ip {a} was not honoured for {c}"
        );
    }
    let listed: Vec<Value> = dl.endpoints();
    assert_eq!(
        listed.len(),
        placed.len(),
        "ovl endpoint list should hold one endpoint per container: {listed:?}"
    );
    let b1 = h1.ip("b1", "blue").unwrap();
    let (r1, r2) = (h1.ip("r1", "red").unwrap(), h2.ip("r2", "red").unwrap());

    // Within a tenant across hosts: replies both ways.
    assert_reaches(h1, "b1", fixed);
    assert_reaches(h2, "b2", b1);
    assert_reaches(h1, "p1", p2);
    assert_reaches(h2, "p2", p1);
    assert_reaches(h1, "r1", r2);
    assert_reaches(h2, "r2", r1);
    // Across tenants, in the same subnet (only the tenant keeps them apart) and across
    // subnets: nothing.
    assert_cannot_reach(h1, "b1", p2);
    assert_cannot_reach(h2, "p2", b1);
    assert_cannot_reach(h2, "b2", p1);
    assert_cannot_reach(h1, "b1", r2);
    assert_cannot_reach(h2, "r2", b1);

    // docker network connect: b1 on two ovl networks at once, reaching both.
    h1.connect("red", "b1", &[]);
    let b1_red = h1
        .ip("b1", "red")
        .expect("docker inspect shows b1's address on red");
    assert!(red_net.contains(b1_red), "b1 got {b1_red} on red");
    let b1_red_ep = wait_ok_at(&dl, "red", b1_red).await;
    assert_eq!(b1_red_ep["host"], "h1");
    assert_endpoint_plugged(&dl, &b1_red_ep);
    let ifaces =
        String::from_utf8_lossy(&h1.exec("b1", &["ip", "-o", "-4", "addr"]).stdout).to_string();
    assert!(
        ifaces.contains(&format!("{b1}/")) && ifaces.contains(&format!("{b1_red}/")),
        "b1 should have an address on each network: {ifaces}"
    );
    assert_reaches(h1, "b1", r2);
    assert_reaches(h2, "r2", b1_red);
    assert_reaches(h1, "b1", fixed);

    // docker network disconnect: that endpoint, its port and veth go; red is out of reach.
    h1.disconnect("red", "b1");
    wait_for_no_endpoint(&dl, "red", b1_red, "docker network disconnect").await;
    assert_endpoint_unplugged(&dl, &b1_red_ep, "docker network disconnect").await;
    assert_cannot_reach(h1, "b1", r2);
    assert_reaches(h1, "b1", fixed);

    // docker rm: the endpoint, its port and veth go, and its address is free again (taken
    // here with --ip by a container on the other host).
    let b2_ep = dl.endpoint_with_ip("blue", fixed).expect("b2's endpoint");
    assert_endpoint_plugged(&dl, &b2_ep);
    h2.rm("b2");
    wait_for_no_endpoint(&dl, "blue", fixed, "docker rm").await;
    assert_endpoint_unplugged(&dl, &b2_ep, "docker rm").await;
    h1.run("b3", &["--network", "blue", "--ip", &fixed.to_string()]);
    let b3_ep = wait_ok_at(&dl, "blue", fixed).await;
    assert_eq!(b3_ep["host"], "h1", "{b3_ep}");
    assert_reaches(h1, "b1", fixed);

    // Everything goes: containers, then the networks on both hosts.
    for h in [h1, h2] {
        assert!(
            !dl.owned_interfaces(&h.name).is_empty(),
            "{} should have owned OVS interfaces before the cleanup",
            h.name
        );
    }
    for (h, c) in [
        (h1, "b1"),
        (h1, "b3"),
        (h1, "p1"),
        (h2, "p2"),
        (h1, "r1"),
        (h2, "r2"),
    ] {
        h.rm(c);
    }
    for h in [h1, h2] {
        for n in ["blue", "pink", "red"] {
            h.network_rm(n);
        }
    }
    assert_all_gone(&dl, "docker rm and docker network rm").await;
    // No address stays reserved: an administrator can give each one out again.
    let used = [("blue", b1), ("blue", fixed), ("pink", p1), ("pink", p2)];
    let used = used
        .into_iter()
        .chain([("red", b1_red), ("red", r1), ("red", r2)]);
    for (i, (tenant, a)) in used.enumerate() {
        dl.lab
            .endpoint(&format!("probe{i}"), tenant, "h1", &a.to_string())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, dockerd and busybox-static"]
async fn docker_network_containers_survive_restarts_of_themselves_and_of_dockerd() {
    let dl = DockerLab::up("ovldk2", 89, 7313, 2).await;
    let (h1, h2) = (dl.host("h1"), dl.host("h2"));
    attachable_tenant(&dl, "blue", "10.43.0.0/24");
    for h in [h1, h2] {
        // `--subnet` so that `docker run --ip` is allowed.
        h.network_create("blue", "blue", &["--subnet", "10.43.0.0/24"]);
    }
    let (a1, a2) = (ip("10.43.0.11"), ip("10.43.0.12"));
    h1.run("c1", &["--network", "blue", "--ip", &a1.to_string()]);
    h2.run("c2", &["--network", "blue", "--ip", &a2.to_string()]);
    wait_ok_at(&dl, "blue", a1).await;
    wait_ok_at(&dl, "blue", a2).await;
    assert_reaches(h1, "c1", a2);
    assert_reaches(h2, "c2", a1);

    // docker restart, on either side.
    restart_measured(
        &dl,
        h2,
        "c2",
        &Watch {
            from_host: h1,
            from: "c1",
            tenant: "blue",
            addr: a2,
        },
        "docker-network restart h2",
    );
    wait_ok_at(&dl, "blue", a2).await;
    restart_measured(
        &dl,
        h1,
        "c1",
        &Watch {
            from_host: h2,
            from: "c2",
            tenant: "blue",
            addr: a1,
        },
        "docker-network restart h1",
    );
    wait_ok_at(&dl, "blue", a1).await;

    // docker stop: never ok while stopped; docker start: back.
    let w = Watch {
        from_host: h1,
        from: "c1",
        tenant: "blue",
        addr: a2,
    };
    stopped(
        &dl,
        &w,
        Duration::from_secs(3),
        h2,
        "c2",
        "docker-network stop",
    );
    let started = Instant::now();
    h2.start("c2");
    wait_ok_at(&dl, "blue", a2).await;
    let back = h1.ping_until_reply("c1", a2, Duration::from_secs(10));
    eprintln!(
        "FIGURE docker-network start: ok and replying {:?} after docker start was run",
        started.elapsed()
    );
    assert!(back.is_some(), "c2 does not answer after docker start");

    // dockerd restarts under running containers (--live-restore): traffic goes on.
    dockerd_restart_measured(
        &dl,
        h2,
        &Watch {
            from_host: h1,
            from: "c1",
            tenant: "blue",
            addr: a2,
        },
    );
    dockerd_restart_measured(
        &dl,
        h1,
        &Watch {
            from_host: h2,
            from: "c2",
            tenant: "blue",
            addr: a1,
        },
    );
    // The driver restarts (an upgrade): running containers are not touched.
    let pinger = Pinger::start(&h1.netns_path("c1"), a2, PING_EVERY);
    std::thread::sleep(Duration::from_millis(500));
    let from = unix_now();
    let took = dl.restart_driver("h2");
    std::thread::sleep(Duration::from_secs(1));
    let trace = pinger.stop();
    let gap = trace.longest_gap(from, unix_now());
    eprintln!(
        "FIGURE ovl-docker restart on h2: back in {took:?}; longest gap between replies {gap:?}; \
         {}/{} replies",
        trace.replies.len(),
        trace.sent
    );
    assert!(
        gap < Duration::from_secs(1),
        "traffic to c2 stopped for {gap:?} across a driver restart"
    );

    // The restarted engines and driver still drive the network: a restart, and a new
    // container.
    restart_measured(
        &dl,
        h2,
        "c2",
        &Watch {
            from_host: h1,
            from: "c1",
            tenant: "blue",
            addr: a2,
        },
        "docker-network restart h2 after dockerd and ovl-docker restarts",
    );
    h2.run("c3", &["--network", "blue"]);
    let a3 = h2.ip("c3", "blue").expect("c3's address");
    wait_ok_at(&dl, "blue", a3).await;
    assert_reaches(h1, "c1", a3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, dockerd and busybox-static"]
async fn hand_attached_containers_follow_restart_stop_and_start() {
    let dl = DockerLab::up("ovldk3", 90, 7314, 2).await;
    let (h1, h2) = (dl.host("h1"), dl.host("h2"));
    // An ordinary tenant: an administrator attaches the containers.
    dl.ovl_json(&["tenant", "create", "green", "--subnet", "10.44.0.0/24"]);
    let (a1, a2) = (ip("10.44.0.11"), ip("10.44.0.12"));
    for (h, c, a) in [(h1, "hc1", a1), (h2, "hc2", a2)] {
        h.run(c, &["--network", "none"]);
        dl.ovl_json(&[
            "endpoint",
            "create",
            "green",
            "--host",
            &h.name,
            "--name",
            c,
            "--docker",
            c,
            "--ip",
            &a.to_string(),
        ]);
    }
    dl.wait_state("hc1", "ok", SETTLE).await;
    dl.wait_state("hc2", "ok", SETTLE).await;
    assert_reaches(h1, "hc1", a2);
    assert_reaches(h2, "hc2", a1);

    // The original bug: after docker restart, ovl said ok and no packet passed again.
    restart_measured(
        &dl,
        h2,
        "hc2",
        &Watch {
            from_host: h1,
            from: "hc1",
            tenant: "green",
            addr: a2,
        },
        "hand-attached restart h2",
    );
    dl.wait_state("hc2", "ok", SETTLE).await;
    restart_measured(
        &dl,
        h1,
        "hc1",
        &Watch {
            from_host: h2,
            from: "hc2",
            tenant: "green",
            addr: a1,
        },
        "hand-attached restart h1",
    );
    dl.wait_state("hc1", "ok", SETTLE).await;
    assert_reaches(h2, "hc2", a1);

    // docker stop: target-missing, never ok, no traffic.
    let w = Watch {
        from_host: h1,
        from: "hc1",
        tenant: "green",
        addr: a2,
    };
    let o = stopped(
        &dl,
        &w,
        Duration::from_secs(4),
        h2,
        "hc2",
        "hand-attached stop",
    );
    let missing_at = o
        .samples
        .iter()
        .find(|(_, s)| s.as_deref() == Some("target-missing"))
        .map(|(t, _)| t - o.returned);
    eprintln!(
        "FIGURE hand-attached stop: target-missing shown {} after docker stop returned",
        missing_at
            .map(|t| format!("{t:.3} s"))
            .unwrap_or_else(|| "NEVER".into())
    );
    let shown = dl.endpoints();
    let hc2 = shown
        .iter()
        .find(|e| e["name"] == "hc2")
        .expect("hc2 is still an endpoint while stopped");
    assert_eq!(
        hc2["state"], "target-missing",
        "a stopped container's endpoint: {hc2}"
    );

    // docker start: ok again and replies pass.
    let started = Instant::now();
    h2.start("hc2");
    let ok_after = dl.wait_state("hc2", "ok", SETTLE).await;
    let reply_after = h1.ping_until_reply("hc1", a2, Duration::from_secs(10));
    eprintln!(
        "FIGURE hand-attached start: ok {ok_after:?} and replying {:?} after docker start was run",
        reply_after.map(|_| started.elapsed())
    );
    assert!(
        reply_after.is_some(),
        "hc2 does not answer after docker start"
    );
    assert_reaches(h2, "hc2", a1);

    // The agent keeps following the engine across the engine's own restart.
    let w = Watch {
        from_host: h1,
        from: "hc1",
        tenant: "green",
        addr: a2,
    };
    dockerd_restart_measured(&dl, h2, &w);
    restart_measured(
        &dl,
        h2,
        "hc2",
        &w,
        "hand-attached restart h2 after a dockerd restart",
    );
    dl.wait_state("hc2", "ok", SETTLE).await;
}
