//! Every shipped example parses and plans; every broken file in
//! rules/invalid fails with exit status 2 and the message its first line
//! promises, naming the file. No root needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use lowport::config::{self, Source};
use lowport::firewall::{plan, SystemHost};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_parses_and_plans() {
    let files = yaml_files("rules/examples");
    assert!(
        files.len() >= 5,
        "expected at least 5 examples, found {files:?}"
    );
    for path in files {
        let source = Source {
            file: Some(path.clone()),
            specs: vec![],
        };
        let config = config::load(&source).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!config.mappings.is_empty(), "{}", path.display());
        let p = plan::plan(&config.mappings, &SystemHost)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!p.rules.nat.is_empty(), "{}", path.display());
    }
}

#[test]
fn every_invalid_file_fails_with_its_message_and_exit_2() {
    let files = yaml_files("rules/invalid");
    assert!(
        files.len() >= 10,
        "expected at least 10 invalid files, found {}",
        files.len()
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!("{}: first line must be `# expect: MESSAGE`", path.display())
            });
        let out = Command::new(env!("CARGO_BIN_EXE_lowport"))
            .arg("-c")
            .arg(&path)
            .args(["rules", "apply", "--dry-run"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(expected),
            "{}:\n expected: {expected}\n got: {stderr}",
            path.display()
        );
        assert!(
            stderr.contains(&path.display().to_string()),
            "{}: the message must name the file: {stderr}",
            path.display()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_map_spec_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_lowport"))
        .args(["-m", "80:0", "rules", "apply", "--dry-run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("-m 80:0: mapping #1: to \"0\": port 0 is not allowed"),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_a_usage_error_that_names_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_lowport"))
        .args(["-c", "/nonexistent/lowport.yaml", "rules", "apply"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read /nonexistent/lowport.yaml"),
        "{stderr}"
    );
}

#[test]
fn unknown_subcommand_is_exit_2_and_help_teaches() {
    let bin = env!("CARGO_BIN_EXE_lowport");
    let out = Command::new(bin).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Whatever the terminal's width: clap wraps help to COLUMNS.
    let out = Command::new(bin)
        .arg("--help")
        .env("COLUMNS", "200")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["rules", "-m, --map", "EXIT STATUS", "80:8080"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
