//! The diagnosis as data: each finding with its status, topic and fix,
//! the report `lowport check` prints as text or JSON, and the `rules apply`
//! command line the fixes suggest.

use std::fmt;

use serde::Serialize;

use crate::config::Source;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// In place. Printed ✓.
    Ok,
    /// Missing or broken for the way this host serves the mappings: exit 1. Printed ✗.
    Problem,
    /// Worth knowing; does not fail the check. Printed !.
    Warning,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Problem => "✗",
            Status::Warning => "!",
        }
    }
}

/// One line of the diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub status: Status,
    /// What was looked at: `config`, `target`, `rules`, `sysctl`, `input`,
    /// `nat`, `proxy`.
    pub topic: &'static str,
    pub message: String,
    /// The command or setting that fixes a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// How this host serves the mappings now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// lowport's NAT rules are installed.
    Rules,
    /// A lowport proxy listens on a mapped port.
    Proxy,
    /// Neither.
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Rules => "rules",
            Mode::Proxy => "proxy",
            Mode::None => "none",
        })
    }
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub mode: Mode,
    pub findings: Vec<Finding>,
    pub recommendation: String,
}

impl Report {
    /// Text for people: one line per finding, fixes indented below.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!("{} {}: {}\n", f.status.mark(), f.topic, f.message));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        out.push_str(&format!("→ {}\n", self.recommendation));
        out
    }

    /// JSON for machines.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

pub(super) struct Findings(pub(super) Vec<Finding>);

impl Findings {
    pub(super) fn push(
        &mut self,
        status: Status,
        topic: &'static str,
        message: String,
        fix: Option<String>,
    ) {
        self.0.push(Finding {
            status,
            topic,
            message,
            fix,
        });
    }
    pub(super) fn ok(&mut self, topic: &'static str, message: String) {
        self.push(Status::Ok, topic, message, None);
    }
    pub(super) fn warn(&mut self, topic: &'static str, message: String, fix: Option<String>) {
        self.push(Status::Warning, topic, message, fix);
    }
    /// A problem when `needed` (the mode in use depends on it), else a warning.
    pub(super) fn need(&mut self, needed: bool, topic: &'static str, message: String, fix: String) {
        let status = if needed {
            Status::Problem
        } else {
            Status::Warning
        };
        self.push(status, topic, message, Some(fix));
    }
}

/// The `rules apply` command line for the configuration the user gave, so
/// a suggested fix can be pasted as it is.
pub fn apply_command(source: &Source) -> String {
    let mut cmd = String::from("sudo lowport");
    if let Some(file) = &source.file {
        if file.as_path() != std::path::Path::new(crate::config::DEFAULT_CONFIG) {
            cmd.push_str(" -c ");
            cmd.push_str(&shell_quote(&file.display().to_string()));
        }
    }
    for spec in &source.specs {
        cmd.push_str(" -m ");
        cmd.push_str(&shell_quote(spec));
    }
    cmd.push_str(" rules apply");
    cmd
}

/// Quote `s` for a POSIX shell when it needs it.
pub(super) fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@,+".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testutil::*;
    use serde_json::{json, Value};

    #[test]
    fn suggested_apply_names_what_the_user_gave() {
        let source = |file: Option<&str>, specs: &[&str]| Source {
            file: file.map(std::path::PathBuf::from),
            specs: specs.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            apply_command(&source(None, &[])),
            "sudo lowport rules apply"
        );
        assert_eq!(
            apply_command(&source(Some(crate::config::DEFAULT_CONFIG), &[])),
            "sudo lowport rules apply"
        );
        assert_eq!(
            apply_command(&source(Some("/srv/my conf/web.yaml"), &["80:8080", "[::]:443:[::1]:8443"])),
            "sudo lowport -c '/srv/my conf/web.yaml' -m 80:8080 -m '[::]:443:[::1]:8443' rules apply"
        );
        assert_eq!(
            apply_command(&source(None, &["it's"])),
            "sudo lowport -m 'it'\\''s' rules apply"
        );
    }

    /// Each kind of finding is kept, in order, with its status and fix: a
    /// check that finds something fine says so (the ✓ lines).
    #[test]
    fn findings_keep_each_line_with_its_status() {
        let mut f = Findings(Vec::new());
        f.ok("target", "fine".into());
        f.warn("proxy", "worth knowing".into(), Some("do this".into()));
        f.need(true, "sysctl", "missing".into(), "fix it".into());
        f.need(false, "sysctl", "other mode".into(), "fix that".into());
        let got: Vec<_> =
            f.0.iter()
                .map(|x| (x.status, x.topic, x.message.as_str(), x.fix.as_deref()))
                .collect();
        assert_eq!(
            got,
            [
                (Status::Ok, "target", "fine", None),
                (Status::Warning, "proxy", "worth knowing", Some("do this")),
                (Status::Problem, "sysctl", "missing", Some("fix it")),
                (Status::Warning, "sysctl", "other mode", Some("fix that")),
            ]
        );
    }

    #[test]
    fn report_text_and_json() {
        let report = Report {
            ok: false,
            mode: Mode::Proxy,
            findings: vec![
                finding(Status::Ok, "config", None),
                finding(Status::Problem, "target", Some("start it")),
                finding(Status::Warning, "input", None),
            ],
            recommendation: "do this".into(),
        };
        assert_eq!(
            report.to_text(),
            "✓ config: m\n✗ target: m\n    fix: start it\n! input: m\n→ do this\n"
        );
        let v: Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "mode": "proxy", "recommendation": "do this", "findings": [
                {"status": "ok", "topic": "config", "message": "m"},
                {"status": "problem", "topic": "target", "message": "m", "fix": "start it"},
                {"status": "warning", "topic": "input", "message": "m"},
            ]})
        );
        assert_eq!(
            [Mode::Rules, Mode::Proxy, Mode::None].map(|m| m.to_string()),
            ["rules", "proxy", "none"]
        );
    }

    #[test]
    fn shell_quote_quotes_what_a_shell_would_split() {
        assert_eq!(shell_quote("/etc/lowport.yaml"), "/etc/lowport.yaml");
        assert_eq!(shell_quote("a:b=c@d,e+f_g-h.i"), "a:b=c@d,e+f_g-h.i");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }
}
