//! Which datapath a bridge uses: the kernel module (`system`) or OVS's userspace one
//! (`netdev`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A bridge's `datapath_type` (`ovs-vsctl set bridge br-int datapath_type=netdev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatapathType {
    /// The Linux kernel's openvswitch module. OVS also calls this the empty string.
    System,
    /// OVS's userspace datapath: works without the kernel module, and does VXLAN and GRE
    /// itself, but is slower and needs the underlay address on an OVS internal port.
    Netdev,
}

impl DatapathType {
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathType::System => "system",
            DatapathType::Netdev => "netdev",
        }
    }

    /// Reads a bridge's `datapath_type` column, where OVS treats `""` as `system`. `None` for
    /// a type ovl does not use (such as `dummy`).
    pub fn from_column(value: &str) -> Option<Self> {
        match value {
            "" | "system" => Some(DatapathType::System),
            "netdev" => Some(DatapathType::Netdev),
            _ => None,
        }
    }
}

impl fmt::Display for DatapathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatapathType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "system" => Ok(DatapathType::System),
            "netdev" => Ok(DatapathType::Netdev),
            other => Err(format!(
                "'{other}' is not a datapath type; use system or netdev"
            )),
        }
    }
}

/// Where the kernel shows a loaded openvswitch module.
pub const KERNEL_MODULE_PATH: &str = "/sys/module/openvswitch";

/// The datapath to use: `override_` if given, else `system` when the openvswitch kernel
/// module is loaded, else `netdev`. The caller logs the choice.
pub fn choose_datapath(override_: Option<DatapathType>) -> DatapathType {
    choose_datapath_with(Path::new(KERNEL_MODULE_PATH), override_)
}

/// [`choose_datapath`] looking for the module at `module_path` (for tests).
pub fn choose_datapath_with(module_path: &Path, override_: Option<DatapathType>) -> DatapathType {
    match override_ {
        Some(d) => d,
        None if module_path.exists() => DatapathType::System,
        None => DatapathType::Netdev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_module_decides_unless_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path();
        let absent = dir.path().join("openvswitch");
        assert_eq!(choose_datapath_with(present, None), DatapathType::System);
        assert_eq!(choose_datapath_with(&absent, None), DatapathType::Netdev);
        assert_eq!(
            choose_datapath_with(present, Some(DatapathType::Netdev)),
            DatapathType::Netdev
        );
        assert_eq!(
            choose_datapath_with(&absent, Some(DatapathType::System)),
            DatapathType::System
        );
    }

    #[test]
    fn column_values_parse() {
        assert_eq!(DatapathType::from_column(""), Some(DatapathType::System));
        assert_eq!(
            DatapathType::from_column("netdev"),
            Some(DatapathType::Netdev)
        );
        assert_eq!(DatapathType::from_column("dummy"), None);
        assert_eq!(
            "netdev".parse::<DatapathType>().unwrap(),
            DatapathType::Netdev
        );
        assert!("kernel".parse::<DatapathType>().is_err());
    }
}
