//! `lowport`: parse the command line, set up logging, run one command, and
//! turn its result into an exit status (0 ok, 1 runtime failure, 2 bad
//! usage or configuration).

use std::process::ExitCode;

use clap::Parser;
use lowport::cli::{Cli, Command};
use lowport::commands::one_line;
use lowport::commands::{self, Failure};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
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

/// Print the error and its cause chain, one cause a line: whatever a
/// message quotes (a file name, a value from the config, a kernel answer)
/// has its line breaks and other control characters escaped, so nothing
/// a user wrote can start a line of its own.
///
/// A cause a line above already quotes word for word (an error that puts
/// its source in its own message, as `cannot read FILE: {source}` does)
/// is not printed again ([`lowport::error_messages`]).
fn report(failure: &Failure) {
    let mut messages = lowport::error_messages(failure.error()).into_iter();
    if let Some(first) = messages.next() {
        eprintln!("lowport: error: {}", one_line(&first));
    }
    for cause in messages {
        eprintln!("  caused by: {}", one_line(&cause));
    }
}

/// A command line clap refused: printed as every other error is
/// (`lowport: error: ...`, the values it quotes escaped), then clap's usage
/// hint; exit 2. `--help` and `--version` go to stdout with exit 0.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let mut text = e.render().to_string();
    // The values clap quotes are the user's: escape them where they appear.
    for (_, value) in e.context() {
        let values: Vec<&String> = match value {
            ContextValue::String(s) => vec![s],
            ContextValue::Strings(v) => v.iter().collect(),
            _ => vec![],
        };
        for v in values {
            let escaped = one_line(v);
            if escaped != *v {
                text = text.replace(v.as_str(), &escaped);
            }
        }
    }
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    eprint!("lowport: error: {text}");
    if !text.ends_with('\n') {
        eprintln!();
    }
    ExitCode::from(2)
}
