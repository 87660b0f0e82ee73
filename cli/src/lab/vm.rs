//! Runs `ovl lab …` commands against a VM lab (`ovl lab up --vm`): the same commands as for the
//! namespace lab, answered by [`super::vm`]. Progress goes to stderr.

use anyhow::{bail, Context};

use crate::args::{GlobalArgs, LabCommand, LabUpArgs, OutputFormat};
use crate::output::Table;
use ovl_lab::vm::{self, Role, VmLabState, VmSpec};

fn progress(line: &str) {
    eprintln!("  {line}");
}

/// Handles `cmd` when it is for a VM lab (`up --vm`, or any command on a directory holding a
/// VM lab); `None` leaves it to the namespace lab.
pub async fn dispatch(cmd: &LabCommand, global: &GlobalArgs) -> Option<anyhow::Result<()>> {
    let dir = match cmd {
        LabCommand::Up(a) if a.vm => return Some(up(a).await),
        LabCommand::Up(_) => return None,
        LabCommand::Status(d) | LabCommand::Down(d) | LabCommand::Demo(d) => &d.dir,
        LabCommand::Container(a) => &a.dir.dir,
        LabCommand::Exec(a) => &a.dir.dir,
    };
    if !VmLabState::exists(dir) {
        return None;
    }
    let dir = dir.clone();
    Some(match cmd {
        LabCommand::Up(_) => unreachable!("handled above"),
        LabCommand::Down(_) => blocking(move || Ok(vm::down(&dir, &mut progress)?))
            .await
            .map(|()| println!("The VM lab is down.")),
        LabCommand::Status(_) => status(&dir, global).await,
        LabCommand::Container(a) => {
            let a = a.clone();
            blocking(move || {
                if a.rm {
                    vm::remove_container(&dir, &a.name)?;
                    println!("removed container {}", a.name);
                    return Ok(());
                }
                let host = a.host.clone().unwrap_or_default();
                let out =
                    vm::add_container(&dir, &a.name, &host, a.tenant.as_deref(), a.ip.as_deref())?;
                println!(
                    "created container {} (network namespace {}) on {host}",
                    a.name, a.name
                );
                print!("{out}");
                Ok(())
            })
            .await
        }
        LabCommand::Exec(a) => {
            let a = a.clone();
            match blocking(move || Ok(vm::exec(&dir, &a.name, &a.command)?)).await {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => std::process::exit(s.code().unwrap_or(1)),
                Err(e) => Err(e),
            }
        }
        LabCommand::Demo(_) => match blocking(move || Ok(vm::demo(&dir)?)).await {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(anyhow::anyhow!("the VM lab's demo failed ({s})")),
            Err(e) => Err(e),
        },
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the lab task panicked")?
}

async fn up(a: &LabUpArgs) -> anyhow::Result<()> {
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("finding the ovl executable")?
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
    };
    let source_dir = match &a.source_dir {
        Some(d) => d.clone(),
        // target/<profile>/ovl in a checkout: the tree is two levels up.
        None => bin_dir
            .ancestors()
            .nth(2)
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
    };
    let hosts = a.hosts.unwrap_or(2);
    if !(1..=20).contains(&hosts) {
        bail!("--hosts must be between 1 and 20, not {hosts}");
    }
    let spec = VmSpec {
        hosts,
        dir: a.dir.dir.clone(),
        netns: a.prefix.clone(),
        bin_dir,
        source_dir,
        image: a.image.clone(),
        memory_mib: a.memory,
        cpus: a.cpus,
    };
    eprintln!(
        "ovl lab up --vm: a controller VM and {} host VMs in {}",
        spec.hosts,
        spec.dir.display()
    );
    let s = spec.clone();
    let state = blocking(move || Ok(vm::up(&s, &mut progress)?)).await?;
    let admin = spec.admin_credentials();
    println!(
        "The VM lab is up: controller {} and {} host VMs ({}).",
        spec.controller_ip(),
        state.hosts().count(),
        state.accel.map(|a| a.describe()).unwrap_or("?")
    );
    println!();
    println!("Try:");
    println!("  ovl lab status");
    println!("  ovl lab exec controller -- ovl --credentials /etc/ovl/pki/admin --controller {}:7300 status", spec.controller_ip());
    println!("  ovl lab exec host1 -- ovs-vsctl show");
    println!("  ovl lab container web1 --host host1 --tenant blue   # after: ovl lab exec controller -- ovl … tenant create blue --subnet 10.10.0.0/24");
    println!("  ovl lab demo");
    println!("  ovl lab down");
    println!();
    println!(
        "From this machine the management network is inside namespace {}: ip netns exec {} ovl --controller {}:7300 --credentials {} status",
        spec.netns,
        spec.netns,
        spec.controller_ip(),
        admin.display()
    );
    Ok(())
}

async fn status(dir: &std::path::Path, global: &GlobalArgs) -> anyhow::Result<()> {
    let d = dir.to_path_buf();
    let report = blocking(move || Ok(vm::status(&d)?)).await?;
    if global.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "VM lab in {} (namespace {}, {}){}",
        report.dir.display(),
        report.netns,
        report.accel.map(|a| a.describe()).unwrap_or("?"),
        if report.ready {
            ""
        } else {
            " — NOT READY (up did not finish)"
        }
    );
    let mut t = Table::new(&[
        "VM",
        "ROLE",
        "MGMT",
        "UNDERLAY",
        "QEMU",
        "UNIT",
        "CONTAINERS",
    ]);
    for v in &report.vms {
        t.row(vec![
            v.name.clone(),
            match v.role {
                Role::Controller => "controller".into(),
                Role::Host => "host".into(),
            },
            v.mgmt.to_string(),
            v.underlay.map(|u| u.to_string()).unwrap_or("-".into()),
            match (v.pid, v.running) {
                (Some(p), true) => format!("running (pid {p})"),
                _ => "NOT RUNNING".into(),
            },
            v.unit.clone(),
            v.containers.join(","),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
