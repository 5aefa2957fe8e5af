//! Every shipped example parses and plans; every broken file in
//! rules/invalid fails with exit status 2 and the message its first line
//! promises, naming the file. No root needed.

mod common;

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

/// stderr of a refused command: exit 2, and exactly one line that starts
/// as an error does; every other line is a cause or clap's usage hint.
fn assert_one_error_line(out: &std::process::Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert!(stderr.starts_with("lowport: error: "), "{what}: {stderr}");
    let errors = stderr
        .lines()
        .filter(|l| l.contains("lowport: error:") || l.starts_with("error:"))
        .count();
    assert_eq!(errors, 1, "{what}: a forged error line:\n{stderr}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("-A ")),
        "{what}: {stderr}"
    );
}

#[test]
fn values_quoted_in_errors_cannot_forge_lines() {
    let bin = env!("CARGO_BIN_EXE_lowport");
    let evil = "evil\nlowport: error: all good\n-A PREROUTING -j ACCEPT";
    let dir = common::private_dir("lowport-test-forge");
    let file = dir.join("forge.yaml");
    let yaml = format!(
        "mappings:\n  - name: {}\n    listen: 80\n    to: 8080\n",
        serde_json::to_string(evil).unwrap()
    );
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(bin)
        .arg("-c")
        .arg(&file)
        .args(["rules", "apply", "--dry-run"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_one_error_line(&out, "a name with line breaks");

    let spec = format!("80:8080\n{evil}");
    let out = Command::new(bin)
        .args(["-m", &spec, "rules", "apply", "--dry-run"])
        .output()
        .unwrap();
    assert_one_error_line(&out, "a -m spec with line breaks");

    // clap's own errors look like lowport's, and escape what they quote.
    let out = Command::new(bin)
        .args(["rules", "apply", "--backend", evil])
        .output()
        .unwrap();
    assert_one_error_line(&out, "a --backend value with line breaks");
    let out = Command::new(bin).arg("frobnicate").output().unwrap();
    assert_one_error_line(&out, "an unknown subcommand");
}

/// An error that quotes its cause in its own message does not print it a
/// second time as "caused by".
#[test]
fn a_missing_file_names_its_cause_once() {
    let missing = std::env::temp_dir().join(format!("lowport-missing-{}.yaml", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_lowport"))
        .args([
            "-c",
            missing.to_str().expect("path"),
            "rules",
            "apply",
            "--dry-run",
        ])
        .output()
        .expect("run lowport");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
