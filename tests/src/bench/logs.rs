//! Keeping a lab's daemon logs after the benchmark removes the lab (`--keep-logs DIR`), so
//! where the time went can be read from the agents' timestamps afterwards.
//!
//! Test-harness layer: plain file copies, before the lab goes down.

use std::path::Path;

/// Copies `lab_dir/controller.log` and each `lab_dir/hN/agent.log` into `into` (created if
/// needed) as `controller.log` and `hN-agent.log`; returns how many files were copied. A
/// missing log is skipped: a lab that failed early has fewer.
pub fn keep(lab_dir: &Path, hosts: u8, into: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(into)?;
    let mut copied = 0;
    let mut copy = |from: &Path, name: String| -> std::io::Result<()> {
        if from.exists() {
            std::fs::copy(from, into.join(name))?;
            copied += 1;
        }
        Ok(())
    };
    copy(&lab_dir.join("controller.log"), "controller.log".into())?;
    for i in 1..=hosts {
        copy(
            &lab_dir.join(format!("h{i}")).join("agent.log"),
            format!("h{i}-agent.log"),
        )?;
    }
    Ok(copied)
}
