//! The `ovl` command-line interface as a library: argument definitions ([`args`]), their
//! validation into typed requests ([`request`]), client settings ([`config`]), the controller
//! client ([`client`]), `--wait` polling ([`wait`]), output rendering ([`output`]), exit codes
//! ([`exit`]), the command runner ([`run`]) and `ovl lab …` ([`lab`], a thin caller into the
//! `ovl-lab` crate).
//!
//! It is a library so integration tests can drive the controller exactly as `ovl` does, through
//! [`client::Client`]. It holds no state between invocations and never talks to agents.

pub mod args;
/// The controller client lives in `ovl_common::client` (the Docker driver and the agent use it
/// too); re-exported here under its old path.
pub use ovl_common::client;
pub mod config;
pub mod exit;
pub mod lab;
pub mod output;
pub mod request;
pub mod run;
pub mod topology;
pub mod trace;
pub mod wait;

pub use client::{CallError, Client, ClientError, Timeouts};
