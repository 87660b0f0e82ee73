//! A background `ping -i 0.01` inside a namespace, for tests and benchmarks that measure what
//! a restart costs the data plane: replies against requests and the longest gap between
//! replies.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A background `ping -i 0.01` with per-reply timestamps. Its output is read as it comes: a
/// full pipe would block ping's writes and pause its sending, which reads as an outage.
pub struct Pinger {
    child: Child,
    reader: std::thread::JoinHandle<String>,
}

impl Pinger {
    pub fn start(from: &str, to: Ipv4Addr, seconds: u32) -> Self {
        let count = (seconds * 100).to_string();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                from,
                "ping",
                "-n",
                "-D",
                // Report each request left unanswered, with its time.
                "-O",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count,
                &to.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        let mut stdout = child.stdout.take().expect("ping stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            text
        });
        Self { child, reader }
    }

    /// Waits for the pings to finish: (sent, received, longest gap between replies).
    pub fn finish(mut self) -> PingStats {
        let _ = self.child.wait();
        let text = self.reader.join().expect("ping reader");
        let mut stamps = Vec::new();
        let mut lost_at = Vec::new();
        let mut sent = 0;
        let mut received = 0;
        for line in text.lines() {
            if line.contains("bytes from") {
                if let Some(ts) = line
                    .strip_prefix('[')
                    .and_then(|l| l.split(']').next())
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    stamps.push(ts);
                }
            }
            if line.contains("no answer yet") {
                if let Some(ts) = line
                    .strip_prefix('[')
                    .and_then(|l| l.split(']').next())
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    lost_at.push(ts);
                }
            }
            if line.contains("packets transmitted") {
                let nums: Vec<u32> = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|s| s.parse().ok())
                    .collect();
                sent = nums[0];
                received = nums[1];
            }
        }
        let (gap, gap_at) = stamps
            .windows(2)
            .map(|w| (w[1] - w[0], w[0]))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        PingStats {
            sent,
            received,
            longest_gap: Duration::from_secs_f64(gap),
            gap_at,
            lost_at,
        }
    }
}

#[derive(Debug)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub longest_gap: Duration,
    /// Unix time of the last reply before the longest gap.
    pub gap_at: f64,
    /// Unix times at which ping gave up waiting for a request's reply (`ping -O`: it reports
    /// a request still unanswered when the next one is due; a reply may still come late).
    pub lost_at: Vec<f64>,
}
