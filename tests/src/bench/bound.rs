//! Time bounds for benchmark steps: today's slow code must report "did not finish: N of M in
//! T s" with the figure so far, not run for an hour.

use std::time::{Duration, Instant};

/// A step's time budget, started when created.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    start: Instant,
    limit: Duration,
}

impl Budget {
    pub fn start(limit: Duration) -> Budget {
        Budget {
            start: Instant::now(),
            limit,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether the step has used its time.
    pub fn spent(&self) -> bool {
        self.start.elapsed() >= self.limit
    }

    /// What is left of the budget (zero once spent).
    pub fn left(&self) -> Duration {
        self.limit.saturating_sub(self.start.elapsed())
    }
}

/// The figure of a bounded step: `figure` when all `total` items were done, otherwise
/// "did not finish: `done` of `total` in T s" followed by the figure so far.
pub fn outcome(done: usize, total: usize, elapsed: Duration, figure: &str) -> String {
    if done >= total {
        figure.to_string()
    } else {
        format!(
            "did not finish: {done} of {total} in {:.0} s; so far {figure}",
            elapsed.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_step_says_how_far_it_got() {
        assert_eq!(outcome(3, 3, Duration::from_secs(9), "9 s"), "9 s");
        assert_eq!(
            outcome(2, 3, Duration::from_secs(9), "4.5 s each"),
            "did not finish: 2 of 3 in 9 s; so far 4.5 s each"
        );
    }

    #[test]
    fn a_budget_is_spent_after_its_limit() {
        let b = Budget::start(Duration::ZERO);
        assert!(b.spent());
        assert_eq!(b.left(), Duration::ZERO);
        assert!(!Budget::start(Duration::from_secs(60)).spent());
    }
}
