//! The final summary every benchmark prints: one row per measure of issue 12's table, with the
//! figure measured in this run and the target, so one run gives the rows to copy into
//! `docs/benchmarks.md`.

use std::time::Duration;

/// One measure: what was measured, the figure of this run, and the target it is compared to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub label: String,
    pub figure: String,
    pub target: String,
}

impl Row {
    pub fn new(label: impl Into<String>, figure: impl Into<String>, target: &str) -> Row {
        Row {
            label: label.into(),
            figure: figure.into(),
            target: target.into(),
        }
    }
}

/// The table, as Markdown between two marker lines (easy to find in a long log).
pub fn render(title: &str, rows: &[Row]) -> String {
    let mut out =
        format!("==== {title}: summary ====\n| measure | figure | target |\n|---|---|---|\n");
    for r in rows {
        out.push_str(&format!("| {} | {} | {} |\n", r.label, r.figure, r.target));
    }
    out.push_str("====\n");
    out
}

/// Prints [`render`] to stdout.
pub fn print(title: &str, rows: &[Row]) {
    println!("\n{}", render(title, rows));
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Milliseconds with one decimal.
pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// KiB as MiB (or GiB from 1 GiB up), one decimal.
pub fn mem(kib: u64) -> String {
    if kib >= 1024 * 1024 {
        format!("{:.2} GiB", kib as f64 / 1048576.0)
    } else {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_markdown_row_per_measure() {
        let t = render(
            "b",
            &[Row::new("one", "1 s", "< 5 s"), Row::new("two", "2", "≤ 3")],
        );
        assert_eq!(
            t,
            "==== b: summary ====\n| measure | figure | target |\n|---|---|---|\n\
             | one | 1 s | < 5 s |\n| two | 2 | ≤ 3 |\n====\n"
        );
    }

    #[test]
    fn memory_switches_to_gib_at_one_gib() {
        assert_eq!(mem(512 * 1024), "512.0 MiB");
        assert_eq!(mem(3 * 1024 * 1024), "3.00 GiB");
    }
}
