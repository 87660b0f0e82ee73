//! `ovl-agent` turns one host's intent into Open vSwitch ports, veth pairs and namespaces.
//!
//! Layers, top to bottom: the controller session (`session`), the event loop that drives
//! reconciles, the `Datapath` trait with its real Open vSwitch implementation and a recording
//! fake, and under the real one the OVSDB client (`ovsdb`) and the netlink plumbing (`netns`).
//! It never decides what should exist: that is the controller's intent.

pub mod netns;
pub mod ovsdb;
