//! `lowport`: parse the command line, set up logging, run one command, and
//! turn its result into an exit status (0 ok, 1 runtime failure, 2 bad
//! usage or configuration).

use std::process::ExitCode;

use clap::Parser;
use lowport::cli::{Cli, Command};
use lowport::commands::{self, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A long-running proxy logs its start-up line, reloads and counters by
    // default; one-shot commands only warnings.
    let long_running = matches!(
        cli.command,
        Command::Proxy | Command::Rules(lowport::cli::RulesCommand::Watch { .. })
    );
    init_tracing(
        cli.global.verbose + u8::from(long_running),
        cli.global.quiet,
    );
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(&failure);
            failure.exit_code()
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Print the error and its cause chain, one cause a line.
fn report(failure: &Failure) {
    let err = failure.error();
    eprintln!("lowport: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
}
