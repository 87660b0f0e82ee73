//! Create-to-ping probes: the time from an endpoint's create call returning to the first echo
//! reply it sends to a prober on another host. The probe starts before the create, so it sees
//! the endpoint as soon as it answers.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Makes the prober namespace `ns` resolve neighbours every `every` for up to 30 s (instead of
/// every second, three times), so a probe started before its target exists neither waits a
/// second between ARP requests nor gives up with "host unreachable". Each request is a
/// broadcast: the tenant's switches flood it to every port of the tenant.
pub async fn tune_prober(ns: &str, ifname: &str, every: Duration) -> Result<()> {
    let ms = every.as_millis().max(1);
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!("net.ipv4.neigh.{ifname}.retrans_time_ms={ms}"))
        .arg(format!(
            "net.ipv4.neigh.{ifname}.mcast_solicit={}",
            30_000 / ms
        ))
        .output()
        .await
        .context("running sysctl")?;
    if !out.status.success() {
        bail!(
            "sysctl in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts `ping -D -c 1 -i EVERY` from `prober` to `ip`, runs `create`, and returns the time
/// from `create` finishing to the first reply (ping's `-D` wall-clock stamp), or an error when
/// no reply comes within `limit`. The figure's resolution is `every` (and the prober's
/// neighbour retransmission time, [`tune_prober`]).
pub async fn create_to_ping<F, T>(
    prober: &str,
    ip: Ipv4Addr,
    every: Duration,
    limit: Duration,
    create: F,
) -> Result<Duration>
where
    F: Future<Output = Result<T>>,
{
    let mut ping = Command::new("ip")
        .args(["netns", "exec", prober, "ping", "-D", "-n", "-c", "1"])
        .args(["-i", &format!("{:.3}", every.as_secs_f64())])
        .args(["-w", &limit.as_secs().max(1).to_string()])
        .arg(ip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting ping in {prober}"))?;
    let stdout = ping.stdout.take().context("ping stdout")?;
    create.await?;
    let returned = SystemTime::now();
    let reply = tokio::time::timeout(limit + Duration::from_secs(5), first_reply(stdout))
        .await
        .ok()
        .flatten()
        .with_context(|| format!("{ip} did not answer {prober} within {limit:?}"))?;
    let _ = ping.wait().await;
    // The reply cannot precede the endpoint; if the clock says so, count it as instant.
    Ok(reply.duration_since(returned).unwrap_or_default())
}

async fn first_reply(stdout: tokio::process::ChildStdout) -> Option<SystemTime> {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(t) = reply_time(&line) {
            return Some(t);
        }
    }
    None
}

/// `[1700000000.123456] 64 bytes from 10.0.0.1: icmp_seq=3 ttl=64 time=0.5 ms` → the time.
pub fn reply_time(line: &str) -> Option<SystemTime> {
    if !line.contains(" bytes from ") {
        return None;
    }
    let stamp = line.strip_prefix('[')?.split_once(']')?.0;
    let (s, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let secs: u64 = s.parse().ok()?;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Nearest-rank percentile (`q` in 0..=1) of samples; zero when there are none.
pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    if s.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[i - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_stamps_parse_and_other_lines_do_not() {
        let t = reply_time("[1700000000.5] 64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=1 ms");
        assert_eq!(
            t,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500))
        );
        assert_eq!(
            reply_time("PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data."),
            None
        );
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let s: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 0.5), Duration::from_millis(10));
        assert_eq!(percentile(&s, 0.95), Duration::from_millis(19));
        assert_eq!(percentile(&[], 0.95), Duration::ZERO);
    }
}
