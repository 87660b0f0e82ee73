//! The redb store (to be written).
