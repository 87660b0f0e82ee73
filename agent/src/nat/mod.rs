//! NAT and filtering with nftables, in tables ovl owns: one table `ip ovl` per network
//! namespace the agent manages (each tenant router's namespace, and the host's namespace when
//! it carries routers with NAT or published ports).
//!
//! - [`rules`] renders the tables from the intent: pure text, unit-tested without root.
//! - [`nft`] replaces or removes a table inside a namespace by running `nft -f -` there.
//!
//! A table is always replaced whole, in one `nft` transaction (`table ip ovl` / `delete table
//! ip ovl` / the new table), so a packet never sees half a ruleset and the agent never edits
//! rules one by one. Nothing outside the `ovl` tables is read or touched: other tables in the
//! host's firewall, and their chains at the same hooks, are left as they are.

pub mod nft;
pub mod rules;

pub use nft::{Installed, Nft, NftError};
pub use rules::{host_table, router_table, HostRouter, RouterRules, TABLE};
