//! Shared helpers for ovl's integration and end-to-end tests.
