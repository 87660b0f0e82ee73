//! Shared pieces of the benchmark binaries (`ovl-bench`, `ovl-bench-scale`,
//! `ovl-bench-control`, `ovl-bench-tunnels`), test-harness layer: the final summary table of
//! issue 12's figures, time bounds that turn a slow run into an honest "did not finish", and
//! the measurements more than one benchmark needs.
//!
//! Benchmarks print figures and assert nothing about them.

pub mod bound;
pub mod fill;
pub mod flow_tunnels;
pub mod logs;
pub mod probe;
pub mod summary;
