//! Reading `iptables-save` output: which of lowport's chains exist, their
//! rules, and the jumps that reach them; and splitting a rule into words
//! the way the tools quote them.

use super::CHAIN_PREFIX;

/// What of lowport's is in one table of one family now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TableState {
    /// lowport's chains that exist.
    pub(super) chains: Vec<String>,
    /// Rules outside lowport's chains that jump into them, as `iptables-save`
    /// prints them after `-A ` (`PREROUTING -m comment … -j LOWPORT-…`).
    pub(super) jumps: Vec<String>,
    /// Rules inside lowport's chains: (chain, rest of the line).
    pub(super) rules: Vec<(String, String)>,
}

impl TableState {
    pub(super) fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }
}

/// The tables lowport uses in one family.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct FamilyState {
    pub(super) nat: TableState,
    pub(super) raw: TableState,
}

impl FamilyState {
    pub(super) fn is_empty(&self) -> bool {
        self.nat.is_empty() && self.raw.is_empty()
    }
}

/// Pick lowport's chains, their rules and the jumps to them out of one
/// table's `iptables-save` output.
pub(super) fn parse_save(text: &str) -> TableState {
    let mut state = TableState::default();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                state.chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            if chain.starts_with(CHAIN_PREFIX) {
                state.rules.push((chain.to_owned(), rest.to_owned()));
            } else if rest
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(CHAIN_PREFIX))
            {
                state.jumps.push(rule.to_owned());
            }
        }
    }
    state
}

/// Split an `iptables-save` rule into words, honouring double quotes (and
/// `\"` inside them).
pub(super) fn tokenize(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_keeps_quoted_words() {
        assert_eq!(
            tokenize(r#"-m comment --comment "web [0]" -j X"#),
            vec!["-m", "comment", "--comment", "web [0]", "-j", "X"]
        );
    }

    #[test]
    fn only_lowport_chains_and_jumps_to_them_are_picked_out() {
        let st = parse_save(
            ":PREROUTING ACCEPT [0:0]\n:LOWPORT-PREROUTING - [0:0]\n:OTHER - [0:0]\n\
             -A PREROUTING -p tcp -j OTHER\n\
             -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
             -A OUTPUT -g LOWPORT-OUTPUT\n\
             -A OUTPUT -m comment --comment LOWPORT-OUTPUT -j ACCEPT\n\
             -A OTHER -j LOWPORTX\n\
             -A LOWPORT-PREROUTING -j RETURN\n",
        );
        assert_eq!(st.chains, ["LOWPORT-PREROUTING"]);
        assert_eq!(
            st.jumps,
            [
                "PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING",
                "OUTPUT -g LOWPORT-OUTPUT",
            ]
        );
        assert_eq!(
            st.rules,
            [("LOWPORT-PREROUTING".to_owned(), "-j RETURN".to_owned())]
        );
    }
}
