//! `ovl`: the ovl command-line interface. Parses arguments, runs the command on a
//! single-threaded runtime, and maps failures to the exit codes documented in `--help`.

use std::process::ExitCode;

use clap::Parser;
use ovl_cli::args::{self, Cli, OutputFormat};
use ovl_cli::exit::{self, ExitStatus};

fn main() -> ExitCode {
    // Clap prints its own usage errors and exits with status 2.
    let cli = Cli::parse_from(args::join_wait_values(std::env::args_os()));
    let json = cli.global.format() == OutputFormat::Json;
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(ExitStatus::Other.code());
        }
    };
    match runtime.block_on(ovl_cli::run::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Under -o json a script reads the failure from stdout; a person still sees it
            // on stderr.
            if json {
                exit::report_json(&e);
            }
            exit::report(&e);
            ExitCode::from(ExitStatus::classify(&e).code())
        }
    }
}

/// Diagnostics go to stderr, filtered by `OVL_LOG` (default: errors only), so they never mix
/// with output meant for scripts.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OVL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
