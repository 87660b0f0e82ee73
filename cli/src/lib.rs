//! The `ovl` command-line interface: argument definitions, the controller client, and output
//! rendering. Kept as a library so tests can drive the controller exactly as the CLI does.
