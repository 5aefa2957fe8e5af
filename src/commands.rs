//! What each subcommand does, between the parsed command line and the
//! library, and which exit status each failure earns.

use std::borrow::Cow;
use std::error::Error;
use std::process::ExitCode;

use crate::cli::{BackendArg, Cli, Command, GlobalArgs, RulesCommand};
use crate::config::{self, BackendChoice, Config, ConfigError};
use crate::firewall::{self, plan, Backend};
use crate::privilege;

/// Read and validate the configuration. When lowport gained privilege from
/// its file (setcap), only from a file root controls.
fn load(source: &config::Source) -> Result<Config, ConfigError> {
    if privilege::gained_at_exec() {
        config::load_with(source, privilege::read_root_controlled)
    } else {
        config::load(source)
    }
}

/// A failed command: the error, and whether it was the user's input (exit
/// 2) or the world (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2.
    Usage(Box<dyn Error + Send + Sync>),
    /// Kernel, network or host failure: exit 1.
    Runtime(Box<dyn Error + Send + Sync>),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }

    pub fn error(&self) -> &(dyn Error + 'static) {
        match self {
            Failure::Usage(e) | Failure::Runtime(e) => e.as_ref(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(Box::new(e))
    }
}

impl From<plan::PlanError> for Failure {
    fn from(e: plan::PlanError) -> Self {
        Failure::Usage(Box::new(e))
    }
}

impl From<firewall::FirewallError> for Failure {
    fn from(e: firewall::FirewallError) -> Self {
        Failure::Runtime(Box::new(e))
    }
}

impl From<firewall::RulesError> for Failure {
    fn from(e: firewall::RulesError) -> Self {
        Failure::Runtime(Box::new(e))
    }
}

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let reads_config = !matches!(cli.command, Command::Completions { .. } | Command::Man);
    if reads_config && privilege::gained_at_exec() {
        privilege::refuse_user_choices(!cli.global.map.is_empty(), |v| {
            std::env::var_os(v).is_some()
        })
        .map_err(|e| Failure::Usage(Box::new(e)))?;
    }
    match cli.command {
        Command::Rules(cmd) => rules(&cli.global, cmd),
        Command::Proxy => proxy(&cli.global),
        Command::Check { json } => check(&cli.global, json),
        Command::Completions { shell } => {
            print!("{}", crate::generate::completions(shell));
            Ok(())
        }
        Command::Man => {
            print!("{}", crate::generate::man_page());
            Ok(())
        }
    }
}

/// `lowport proxy`: serve until SIGTERM; SIGHUP re-reads the same sources.
fn proxy(global: &GlobalArgs) -> Result<(), Failure> {
    let source = global.source();
    let config = load(&source)?;
    let reload: crate::proxy::Reload =
        Box::new(move || load(&source).map_err(|e| crate::error_chain(&e)));
    crate::proxy::main(config, reload).map_err(|e| match e.exit_code() {
        2 => Failure::Usage(Box::new(e)),
        _ => Failure::Runtime(Box::new(e)),
    })
}

/// `remove` and `show` need no mappings, so a missing default config file
/// is not an error for them; a file named with -c still must parse.
fn optional_config(global: &GlobalArgs) -> Result<Option<Config>, Failure> {
    let source = global.source();
    let default_missing = source.file.is_none()
        && source.specs.is_empty()
        && !std::path::Path::new(config::DEFAULT_CONFIG).exists();
    if default_missing {
        return Ok(None);
    }
    Ok(Some(load(&source)?))
}

fn backend_for(flag: BackendArg, config: Option<&Config>) -> Result<Box<dyn Backend>, Failure> {
    let choice = flag
        .backend
        .map(BackendChoice::from)
        .or(config.map(|c| c.rules.backend))
        .unwrap_or_default();
    firewall::select_backend(choice).map_err(Failure::from)
}

fn rules(global: &GlobalArgs, cmd: RulesCommand) -> Result<(), Failure> {
    match cmd {
        RulesCommand::Apply { backend, dry_run } => {
            let config = load(&global.source())?;
            let plan = plan::plan(&config.mappings, &firewall::SystemHost)?;
            for w in &plan.warnings {
                tracing::warn!("{w}");
            }
            let mut backend = backend_for(backend, Some(&config))?;
            if dry_run {
                print!("{}", backend.render(&plan.rules));
                if !plan.sysctls.is_empty() {
                    let names: Vec<String> =
                        plan.sysctls.iter().map(|s| format!("{s}=1")).collect();
                    println!("# apply would also set: {}", names.join(" "));
                }
                return Ok(());
            }
            refuse_if_held(backend.as_mut())?;
            let outcome = firewall::apply(backend.as_mut(), &plan, &config.rules)?;
            if let Some(op) = outcome.repaired {
                println!("lowport: replaced what an interrupted `lowport {op}` left");
            }
            println!(
                "lowport: {} mapping(s) installed as {} {} rule(s) in {}",
                config.mappings.len(),
                plan.rules.nat.len(),
                backend.name(),
                backend.place()
            );
            for (s, v) in outcome.sysctls {
                println!("lowport: set {s}={v}");
            }
            if plan.rules.loopback_guard {
                println!(
                    "lowport: note: a loopback target needs {}=1, and lowport's guard keeps the LAN \
                     from reaching 127.0.0.1 through it. A later flush of the firewall (`nft flush \
                     ruleset`, `iptables-restore`) removes the guard but leaves the sysctl on: run \
                     `lowport rules watch` instead (lowport-rules-watch.service) to prevent that",
                    plan::Sysctl::RouteLocalnet
                );
            }
            if outcome.flows_deleted > 0 {
                println!(
                    "lowport: deleted {} UDP conntrack entries of changed mappings",
                    outcome.flows_deleted
                );
            }
            Ok(())
        }
        RulesCommand::Remove { backend } => {
            let config = optional_config(global)?;
            let mut backend = backend_for(backend, config.as_ref())?;
            refuse_if_held(backend.as_mut())?;
            let outcome = firewall::remove(backend.as_mut())?;
            if let Some(op) = outcome.repaired {
                println!("lowport: removed what an interrupted `lowport {op}` left");
            }
            println!("lowport: rules removed ({})", backend.name());
            for (s, v) in outcome.sysctls {
                println!("lowport: restored {s}={v}");
            }
            Ok(())
        }
        RulesCommand::Watch {
            backend,
            interval,
            keep_on_exit,
        } => watch(global, backend, interval, keep_on_exit),
        RulesCommand::Show { backend } => {
            let config = optional_config(global)?;
            let mut backend = backend_for(backend, config.as_ref())?;
            match backend.list()? {
                None => println!(
                    "lowport: no rules installed ({}: no {})",
                    backend.name(),
                    backend.place()
                ),
                Some(rules) => print!("{}", firewall::format_rules(backend.as_ref(), &rules)),
            }
            Ok(())
        }
    }
}

/// A running `rules watch` owns the rules: a one-shot apply or remove
/// would be refused by the kernel (or, with the same rules, do nothing and
/// claim success); say whose they are and what to do instead.
fn refuse_if_held(backend: &mut dyn Backend) -> Result<(), Failure> {
    match backend.held_by() {
        Some(holder) => Err(firewall::FirewallError::OwnedByWatch { holder }.into()),
        None => Ok(()),
    }
}

/// `rules watch`: a bad configuration at start is exit 2, one on SIGHUP
/// is logged and the running rules stay.
fn watch(
    global: &GlobalArgs,
    backend: BackendArg,
    interval: std::time::Duration,
    keep_on_exit: bool,
) -> Result<(), Failure> {
    let source = global.source();
    let config = config::load(&source)?;
    let plan = plan::plan(&config.mappings, &firewall::SystemHost)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let choice = backend
        .backend
        .map(BackendChoice::from)
        .unwrap_or(config.rules.backend);
    let reload: firewall::watch::Reload = Box::new(move || {
        let config = config::load(&source).map_err(|e| crate::error_chain(&e))?;
        let plan = plan::plan(&config.mappings, &firewall::SystemHost)
            .map_err(|e| crate::error_chain(&e))?;
        Ok((config, plan))
    });
    let opts = firewall::watch::WatchOptions {
        interval,
        keep_on_exit,
    };
    firewall::watch::run(config, plan, choice, reload, opts)
        .map_err(|e| Failure::Runtime(Box::new(e)))
}

/// `check`: a bad configuration is exit 2 (as everywhere); a host that
/// lacks something the mappings need is exit 1, after the full report.
fn check(global: &GlobalArgs, json: bool) -> Result<(), Failure> {
    let source = global.source();
    let config = load(&source)?;
    let plan = plan::plan(&config.mappings, &firewall::SystemHost)?;
    let report = crate::check::run(&config, &plan, &source);
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        Ok(())
    } else {
        let n = report
            .findings
            .iter()
            .filter(|f| f.status == crate::check::Status::Problem)
            .count();
        Err(Failure::Runtime(
            format!("check found {n} problem(s) on this host").into(),
        ))
    }
}

/// What a message quotes, made safe to print: `s` with line breaks, tabs
/// and every other control character escaped (`\\n`, `\\t`, `\\u{1b}`),
/// so it stays on one line and cannot move the cursor. Text without them
/// comes back as it is. For a person to read, not to parse back.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_kept() {
        assert_eq!(one_line("mapping #1 \"web\""), "mapping #1 \"web\"");
        assert_eq!(
            one_line("evil\nlowport: error: all good\r\u{1b}[2K"),
            "evil\\nlowport: error: all good\\r\\u{1b}[2K"
        );
        assert!(!one_line("a\u{85}b").contains('\u{85}'));
    }
}
