//! OVSDB client (to be written).
