//! Shell completions and the man page, generated from the clap definitions
//! so they cannot drift from the real command line. Packagers take the
//! copies in `dist/` (a test keeps them current) or run the hidden
//! `lowport completions SHELL` / `lowport man`.

use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lowport", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `lowport.1`, in roff.
pub fn man_page() -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = clap_mangen::Man::new(Cli::command()).render(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Every generated file, by its path under `dist/`.
pub fn dist_files() -> Vec<(String, String)> {
    use clap_complete::Shell;
    vec![
        ("man/lowport.1".into(), man_page()),
        ("completions/lowport.bash".into(), completions(Shell::Bash)),
        ("completions/_lowport".into(), completions(Shell::Zsh)),
        ("completions/lowport.fish".into(), completions(Shell::Fish)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The committed copies in dist/ are what the current CLI generates.
    /// `LOWPORT_BLESS=1 cargo test generated_files` rewrites them.
    #[test]
    fn generated_files_in_dist_are_current() {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
        let bless = std::env::var_os("LOWPORT_BLESS").is_some();
        for (rel, text) in dist_files() {
            let path = dist.join(&rel);
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "dist/{rel} is stale: regenerate with `LOWPORT_BLESS=1 cargo test generated_files`"
            );
        }
    }

    #[test]
    fn man_page_and_completions_know_the_commands() {
        let man = man_page();
        assert!(man.contains("lowport") && man.contains("rules"), "{man}");
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let c = completions(shell);
            assert!(c.contains("check") && c.contains("backend"), "{shell}");
        }
    }
}
