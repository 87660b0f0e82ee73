//! Prometheus metrics for both daemons (`--metrics-listen`, off by default): a small registry
//! of counters, gauges and histograms with labels, rendered in the Prometheus text exposition
//! format (version 0.0.4), and a minimal HTTP/1.1 server that answers `GET /metrics`.
//!
//! Why not a metrics crate: the daemons need a dozen families, the format is a page of rules,
//! and an HTTP server for one GET is smaller than the dependencies it would bring. Values are
//! kept under one mutex per registry; updates are rare (per request, per reconcile, per
//! session event), never per packet.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Label pairs of one series, in name order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone)]
struct Family {
    help: &'static str,
    kind: Kind,
    /// For histograms: the upper bounds of the buckets (seconds), ascending.
    buckets: Vec<f64>,
    series: BTreeMap<Labels, Series>,
}

#[derive(Debug, Clone, Default)]
struct Series {
    /// A counter's or gauge's value; a histogram's sum.
    value: f64,
    /// A histogram's count per bucket (not cumulative) and in all.
    counts: Vec<u64>,
    count: u64,
}

/// A set of metric families, shared by the tasks that update it and the server that shows it.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

/// Bucket bounds (seconds) for durations from a millisecond to a minute.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
];

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Family>) -> R) -> R {
        f(&mut self.families.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn family(&self, name: &'static str, help: &'static str, kind: Kind, buckets: &[f64]) {
        self.with(|f| {
            f.entry(name).or_insert_with(|| Family {
                help,
                kind,
                buckets: buckets.to_vec(),
                series: BTreeMap::new(),
            });
        });
    }

    /// Declares a counter, so it is shown (at 0 for its unlabelled series) before it counts.
    pub fn counter(&self, name: &'static str, help: &'static str) {
        self.family(name, help, Kind::Counter, &[]);
    }

    /// Declares a gauge.
    pub fn gauge(&self, name: &'static str, help: &'static str) {
        self.family(name, help, Kind::Gauge, &[]);
    }

    /// Declares a histogram of seconds with [`DURATION_BUCKETS`].
    pub fn histogram(&self, name: &'static str, help: &'static str) {
        self.family(name, help, Kind::Histogram, &DURATION_BUCKETS);
    }

    fn update(&self, name: &'static str, labels: Labels, f: impl FnOnce(&Family, &mut Series)) {
        self.with(|families| {
            let Some(family) = families.get_mut(name) else {
                debug_assert!(false, "metric {name} is not declared");
                return;
            };
            let buckets = family.buckets.len();
            let mut series = family.series.remove(&labels).unwrap_or_else(|| Series {
                counts: vec![0; buckets],
                ..Series::default()
            });
            f(family, &mut series);
            family.series.insert(labels, series);
        });
    }

    /// Adds `by` to a counter's series.
    pub fn add(&self, name: &'static str, labels: Labels, by: u64) {
        self.update(name, labels, |_, s| s.value += by as f64);
    }

    /// Sets a gauge's series.
    pub fn set(&self, name: &'static str, labels: Labels, value: f64) {
        self.update(name, labels, |_, s| s.value = value);
    }

    /// Moves a gauge's series by `by` (up or down).
    pub fn shift(&self, name: &'static str, labels: Labels, by: f64) {
        self.update(name, labels, |_, s| s.value += by);
    }

    /// Sets a gauge's whole family at once: the series not named are dropped (objects by
    /// state, where a state that no object has any more must not keep its last count).
    pub fn set_all(&self, name: &'static str, values: Vec<(Labels, f64)>) {
        self.with(|families| {
            if let Some(family) = families.get_mut(name) {
                family.series = values
                    .into_iter()
                    .map(|(l, v)| {
                        (
                            l,
                            Series {
                                value: v,
                                ..Series::default()
                            },
                        )
                    })
                    .collect();
            }
        });
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &'static str, labels: Labels, value: Duration) {
        let secs = value.as_secs_f64();
        self.update(name, labels, |family, s| {
            if let Some(i) = family.buckets.iter().position(|b| secs <= *b) {
                s.counts[i] += 1;
            }
            s.count += 1;
            s.value += secs;
        });
    }

    /// The families in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        self.with(|families| {
            let mut out = String::new();
            for (name, f) in families.iter() {
                let kind = match f.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "histogram",
                };
                let _ = writeln!(out, "# HELP {name} {}", escape_help(f.help));
                let _ = writeln!(out, "# TYPE {name} {kind}");
                if f.series.is_empty() && f.kind != Kind::Histogram {
                    let _ = writeln!(out, "{name} 0");
                }
                for (labels, s) in &f.series {
                    match f.kind {
                        Kind::Counter | Kind::Gauge => {
                            let _ = writeln!(
                                out,
                                "{name}{} {}",
                                label_text(labels, None),
                                num(s.value)
                            );
                        }
                        Kind::Histogram => {
                            let mut cumulative = 0;
                            for (bound, n) in f.buckets.iter().zip(&s.counts) {
                                cumulative += n;
                                let le = num(*bound);
                                let _ = writeln!(
                                    out,
                                    "{name}_bucket{} {cumulative}",
                                    label_text(labels, Some(&le))
                                );
                            }
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {}",
                                label_text(labels, Some("+Inf")),
                                s.count
                            );
                            let _ = writeln!(
                                out,
                                "{name}_sum{} {}",
                                label_text(labels, None),
                                num(s.value)
                            );
                            let _ = writeln!(
                                out,
                                "{name}_count{} {}",
                                label_text(labels, None),
                                s.count
                            );
                        }
                    }
                }
            }
            out
        })
    }
}

/// A sample value as Prometheus writes it (integers without a fraction).
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{a="1",b="2"}` (with `le` last for a bucket), or nothing without labels.
fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped: each connection gets one
/// answer and is closed (as Prometheus scrapes). Anything else is answered 404; a request
/// that does not arrive within 5 s, or is larger than 8 KiB, is dropped.
pub async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        return Some(());
                    }
                }
                None
            })
            .await;
            if !matches!(head, Ok(Some(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let line = request.lines().next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let (method, path) = (words.next(), words.next());
            let response = match (method, path) {
                (Some("GET"), Some("/metrics")) => {
                    let body = registry.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 24\r\nConnection: close\r\n\r\nonly GET /metrics is here".to_string(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds `addr` and serves the registry there (see [`serve`]); the error names the address.
pub async fn listen(
    addr: SocketAddr,
    registry: Registry,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(tokio::spawn(serve(listener, registry)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_the_text_format() {
        let r = Registry::new();
        r.counter("ovl_requests_total", "API requests answered.");
        r.gauge("ovl_sessions", "Agents connected.");
        r.histogram("ovl_reconcile_seconds", "How long a reconcile took.");
        r.add(
            "ovl_requests_total",
            vec![("kind", "tenant create".into()), ("outcome", "ok".into())],
            2,
        );
        r.set("ovl_sessions", vec![], 3.0);
        r.observe("ovl_reconcile_seconds", vec![], Duration::from_millis(3));
        r.observe("ovl_reconcile_seconds", vec![], Duration::from_secs(2));
        let text = r.render();
        assert!(
            text.contains("# TYPE ovl_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("ovl_requests_total{kind=\"tenant create\",outcome=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("ovl_sessions 3\n"), "{text}");
        assert!(
            text.contains("ovl_reconcile_seconds_bucket{le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("ovl_reconcile_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ovl_reconcile_seconds_bucket{le=\"5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ovl_reconcile_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("ovl_reconcile_seconds_count 2\n"), "{text}");
        assert!(text.contains("ovl_reconcile_seconds_sum 2.003\n"), "{text}");
    }

    #[test]
    fn set_all_drops_the_series_not_named() {
        let r = Registry::new();
        r.gauge("ovl_objects", "Objects by state.");
        r.set_all(
            "ovl_objects",
            vec![
                (vec![("state", "ok".into())], 3.0),
                (vec![("state", "failed".into())], 1.0),
            ],
        );
        r.set_all("ovl_objects", vec![(vec![("state", "ok".into())], 4.0)]);
        let text = r.render();
        assert!(text.contains("ovl_objects{state=\"ok\"} 4\n"), "{text}");
        assert!(!text.contains("failed"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            label_text(&vec![("why", "a \"b\"\\\nc".into())], None),
            "{why=\"a \\\"b\\\"\\\\\\nc\"}"
        );
    }

    #[tokio::test]
    async fn the_server_answers_get_metrics_and_nothing_else() {
        let r = Registry::new();
        r.counter("ovl_up_total", "Test.");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, r));
        let ask = |req: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("version=0.0.4") && ok.ends_with("ovl_up_total 0\n"),
            "{ok}"
        );
        let other = ask("GET / HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        server.abort();
    }
}
