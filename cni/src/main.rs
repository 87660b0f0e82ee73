//! `ovl-cni`, run by a container runtime: the environment and standard input in, a result or
//! a CNI error object on standard output, notes on standard error (see the library).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let outcome = ovl_cni::run(
        |name| std::env::var(name).ok(),
        &mut std::io::stdin().lock(),
        Path::new(ovl_common::local::DEFAULT_SOCKET),
        &mut std::io::stderr(),
    );
    match outcome {
        Ok(Some(result)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&result).expect("results serialize")
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // Runtimes read the object from standard output; a person reads the line.
            println!("{}", e.to_json());
            eprintln!("ovl-cni: {e}");
            ExitCode::FAILURE
        }
    }
}
