//! Namespace plumbing (to be written).
