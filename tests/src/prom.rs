//! Reading what a `/metrics` endpoint serves, by the Prometheus text exposition format's
//! rules (version 0.0.4), so tests check the format as a scraper would and then the values.
//!
//! [`parse`] refuses: a sample line that is not `name{labels} value`, a metric name or label
//! name with characters the format does not allow, an unquoted or badly escaped label value,
//! a value that is not a number, a family's samples before its `# TYPE` or a second `# TYPE`,
//! and a histogram whose buckets are not cumulative, lack `+Inf`, or disagree with `_count`.

use std::collections::BTreeMap;

/// One scrape: each series (`name{a="1",b="2"}`, labels in the order served) with its value,
/// and each family's type.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// The value of one series, as written (`ovl_x_total{kind="a"}`); `None` if not served.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The sum over every series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let (n, l) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(a, b)| l.contains(&format!("{a}=\"{b}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn valid_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// Checks `{a="x",b="y"}` and returns it unchanged.
fn check_labels(labels: &str) -> Result<(), String> {
    let inner = labels
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .ok_or_else(|| format!("labels not in braces: {labels}"))?;
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("a label without =\"value\": {labels}"))?;
        if !valid_name(name, false) {
            return Err(format!("bad label name '{name}' in {labels}"));
        }
        // The value runs to the first quote not escaped.
        let mut escaped = false;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, other) => return Err(format!("bad escape \\{other} in {labels}")),
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, '\n') => return Err(format!("a raw newline in {labels}")),
                _ => {}
            }
        }
        let end = end.ok_or_else(|| format!("an unterminated label value in {labels}"))?;
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(())
}

/// Parses and checks a scrape (see the module's rules).
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut s = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if s.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("a second TYPE for the family".into()));
                    }
                }
                (Some("HELP"), Some(name), _) if valid_name(name, true) => {}
                _ => {}
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| at(format!("'{v}' is not a number")))?,
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if !valid_name(name, true) {
            return Err(at(format!("bad metric name '{name}'")));
        }
        if !labels.is_empty() {
            check_labels(labels).map_err(at)?;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| s.types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !s.types.contains_key(family) {
            return Err(at(format!("a sample of {family} before its TYPE")));
        }
        if s.samples.insert(series.to_string(), value).is_some() {
            return Err(at("the same series twice".into()));
        }
    }
    check_histograms(&s)?;
    Ok(s)
}

/// Buckets cumulative, ending with `+Inf` equal to `_count`.
fn check_histograms(s: &Scrape) -> Result<(), String> {
    for (family, _) in s.types.iter().filter(|(_, t)| *t == "histogram") {
        // Buckets grouped by their labels other than `le`.
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let bucket = format!("{family}_bucket{{");
        for (k, v) in s.samples.iter().filter(|(k, _)| k.starts_with(&bucket)) {
            let labels = &k[bucket.len()..k.len() - 1];
            let (rest, le) = labels
                .rsplit_once("le=\"")
                .ok_or_else(|| format!("a bucket without le: {k}"))?;
            let le = le.trim_end_matches('"');
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| format!("bad le in {k}"))?
            };
            groups
                .entry(rest.trim_end_matches(',').to_string())
                .or_default()
                .push((le, *v));
        }
        for (labels, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{{{labels}}}: buckets are not cumulative"));
            }
            let last = buckets.last().expect("a group has a bucket");
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{{{labels}}}: no +Inf bucket"));
            }
            let count_key = if labels.is_empty() {
                format!("{family}_count")
            } else {
                format!("{family}_count{{{labels}}}")
            };
            if s.samples.get(&count_key) != Some(&last.1) {
                return Err(format!("{count_key} is not the +Inf bucket"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_scrape_parses_and_bad_ones_are_refused() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\\\"x\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n";
        let s = parse(good).unwrap();
        assert_eq!(s.get("a_total{k=\"v\\\"x\"}"), Some(3.0));
        assert_eq!(s.sum("h_count", &[]), 2.0);
        for bad in [
            "a 1\n",                                 // no TYPE
            "# TYPE a gauge\na x\n",                 // not a number
            "# TYPE a gauge\na{k=v} 1\n",            // unquoted label
            "# TYPE a gauge\n# TYPE a gauge\na 1\n", // TYPE twice
            "# TYPE 1a gauge\n1a 1\n",               // bad name
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", // no +Inf
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad:?}");
        }
    }
}
