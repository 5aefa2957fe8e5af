//! The values of one mapping: protocol, port, `[ADDR:]PORT`, `[HOST:]PORT`,
//! and `-m` specs.

use super::*;

pub(super) fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "both" => Ok(Protocol::Both),
        _ => Err("is not valid; use tcp, udp or both".to_owned()),
    }
}

/// A port number: 1 to 65535.
pub(super) fn parse_port(s: &str) -> Result<NonZeroU16, String> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("port {s:?} is not a number; use 1 to 65535"));
    }
    match s.parse::<u32>() {
        Ok(0) => Err("port 0 is not allowed; use 1 to 65535".to_owned()),
        Ok(n) if n <= 65535 => Ok(NonZeroU16::new(n as u16).expect("checked non-zero")),
        _ => Err(format!("port {s} is out of range; use 1 to 65535")),
    }
}

/// Split "ADDR:PORT" (ADDR may be a bracketed IPv6) into ADDR and PORT.
pub(super) fn split_host_port(s: &str) -> Result<(Option<&str>, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| "an opening '[' without ']'".to_owned())?;
        let port = tail
            .strip_prefix(':')
            .ok_or_else(|| format!("a port must follow [{host}], as in [{host}]:80"))?;
        return Ok((Some(host), port));
    }
    match s.rsplit_once(':') {
        None => Ok((None, s)),
        Some((host, _)) if host.contains(':') => {
            Err("an IPv6 address must be written in brackets, as in \"[::1]:8080\"".to_owned())
        }
        Some((host, port)) => Ok((Some(host), port)),
    }
}

pub(super) fn parse_ip(host: &str, bracketed: bool) -> Result<IpAddr, String> {
    if bracketed {
        host.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("{host:?} is not an IPv6 address"))
    } else {
        host.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| format!("{host:?} is not an IPv4 address (IPv6 goes in brackets)"))
    }
}

/// `[ADDR:]PORT`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let s = s.trim();
    let (host, port) = split_host_port(s)?;
    let port = parse_port(port)?;
    let addr = match host {
        None => None,
        Some(h) => Some(parse_ip(h, s.starts_with('['))?),
    };
    Ok(Listen { addr, port })
}

/// `[HOST:]PORT`, HOST an address or a DNS name.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let s = s.trim();
    let (host, port) = split_host_port(s)?;
    let port = parse_port(port)?;
    let host = match host {
        None => TargetHost::Local,
        Some(h) if s.starts_with('[') => TargetHost::Ip(parse_ip(h, true)?),
        Some(h) => match h.parse::<Ipv4Addr>() {
            Ok(ip) => TargetHost::Ip(IpAddr::V4(ip)),
            Err(_) if is_host_name(h) => TargetHost::Name(h.to_owned()),
            Err(_) => return Err(format!("{h:?} is neither an IPv4 address nor a host name")),
        },
    };
    if let TargetHost::Ip(ip) = host {
        if let Some(what) = crate::mapping::unusable_target(ip) {
            return Err(format!(
                "{ip} cannot be a target ({what}); use this host's address, 127.0.0.1, or leave the host out"
            ));
        }
    }
    Ok(Target { host, port })
}

pub(super) fn is_host_name(h: &str) -> bool {
    // Not all digits and dots: "1.2.3" is a typo for an address, not a name.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    h.len() <= 253
        && h.split('.').all(label_ok)
        && !h.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Parse one `-m` spec:
/// `[LISTEN_ADDR:]LISTEN_PORT:[TARGET_HOST:]TARGET_PORT[/tcp|/udp|/both]`.
/// With three fields, a first field that is a number is the listen port.
pub fn parse_spec(spec: &str, index: usize) -> Result<Mapping, String> {
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((body, proto)) => (
            body,
            parse_protocol(proto).map_err(|m| format!("protocol {proto:?} {m}"))?,
        ),
        None => (spec, Protocol::Tcp),
    };
    let fields = split_fields(body)?;
    let usage = || {
        format!(
            "{spec:?} is not a mapping; write [LISTEN_ADDR:]LISTEN_PORT:[TARGET_HOST:]TARGET_PORT, \
             as in 80:8080, 0.0.0.0:80:127.0.0.1:8080 or [::]:443:[::1]:8443"
        )
    };
    let (listen, to) = match fields.as_slice() {
        [lp, tp] => (lp.to_string(), tp.to_string()),
        [a, b, c] if !a.is_empty() && a.chars().all(|ch| ch.is_ascii_digit()) => {
            (a.to_string(), format!("{b}:{c}"))
        }
        [a, b, c] => (format!("{a}:{b}"), c.to_string()),
        [a, b, c, d] => (format!("{a}:{b}"), format!("{c}:{d}")),
        f if f.len() > 4 => {
            return Err(format!(
                "{}; an IPv6 address must be written in brackets",
                usage()
            ))
        }
        _ => return Err(usage()),
    };
    let listen = parse_listen(&listen).map_err(|m| format!("listen {listen:?}: {m}"))?;
    let target = parse_target(&to).map_err(|m| format!("to {to:?}: {m}"))?;
    Ok(Mapping {
        index,
        name: None,
        listen,
        target,
        protocol,
        proxy_protocol: ProxyProtocol::Off,
    })
}

/// Split on ':' outside brackets, keeping the brackets.
pub(super) fn split_fields(s: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                fields.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{s:?}: unbalanced brackets around an IPv6 address"));
    }
    fields.push(&s[start..]);
    Ok(fields)
}
