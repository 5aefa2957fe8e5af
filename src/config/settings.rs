//! The `proxy:` and `rules:` sections: durations and their limits, sizes,
//! the UDP settings, the rules backend.

use super::*;

/// The longest value each duration setting takes. The timers count
/// milliseconds in a u64 from the proxy's start, so anything far beyond
/// these would still fit, but a "timeout" of years is a typo (or an attempt
/// to overflow `now + timeout`, which once closed every connection at once);
/// the limits say so instead of accepting it.
pub const DURATION_LIMITS: [(&str, Duration); 4] = [
    // A TCP connect gives up after about two minutes of SYN retries anyway.
    ("connect_timeout", Duration::from_secs(10 * 60)),
    ("idle_timeout", Duration::from_secs(7 * 24 * 3600)),
    ("fin_timeout", Duration::from_secs(7 * 24 * 3600)),
    // SIGTERM waits this long: longer than a day is no shutdown.
    ("shutdown_timeout", Duration::from_secs(24 * 3600)),
];

/// The timers' resolution: a shorter duration would round down to zero.
pub(super) const MIN_DURATION: Duration = Duration::from_millis(1);

/// A duration setting: a number of seconds or a humantime text, from 1 ms
/// up to `max`.
pub(super) fn parse_duration(key: &str, v: &Value, max: Duration) -> Result<Duration, String> {
    let text = value_text(v);
    let limit = humantime::format_duration(max);
    let d = match v {
        Value::Number(n) => n.as_u64().map(|secs| {
            // Seconds beyond u64 milliseconds are over every limit anyway.
            Duration::from_secs(secs.min(u64::MAX / 1000))
        }),
        Value::String(s) => match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(humantime::DurationError::NumberOverflow) => {
                return Err(format!(
                    "proxy.{key} \"{text}\" is out of range; write from 1ms up to {limit}"
                ))
            }
            Err(_) => None,
        },
        _ => None,
    };
    match d {
        Some(d) if d > max => Err(format!(
            "proxy.{key} \"{text}\" is too long; the limit is {limit}"
        )),
        Some(d) if d >= MIN_DURATION => Ok(d),
        Some(_) => Err(format!(
            "proxy.{key} \"{text}\" is too short; write at least 1ms (up to {limit})"
        )),
        None => Err(format!(
            "proxy.{key} \"{text}\" is not a duration; write e.g. 500ms, 5s, 10m or 1h \
             (at least 1ms, at most {limit})"
        )),
    }
}

pub(super) fn parse_proxy(raw: RawProxy) -> Result<ProxySettings, String> {
    let mut p = ProxySettings::default();
    if let Some(v) = raw.max_connections {
        p.max_connections = v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                format!(
                    "proxy.max_connections {:?} is not valid; use a whole number of at least 1",
                    value_text(&v)
                )
            })?;
    }
    if let Some(v) = raw.max_connections_per_client {
        p.max_connections_per_client = v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                format!(
                    "proxy.max_connections_per_client \"{}\" is not valid; use a whole number of \
                     at least 1 (at or above max_connections, there is no per-client limit)",
                    value_text(&v)
                )
            })?;
    }
    let durations: [(&str, Option<Value>, &mut Duration); 4] = [
        (
            "connect_timeout",
            raw.connect_timeout,
            &mut p.connect_timeout,
        ),
        ("idle_timeout", raw.idle_timeout, &mut p.idle_timeout),
        ("fin_timeout", raw.fin_timeout, &mut p.fin_timeout),
        (
            "shutdown_timeout",
            raw.shutdown_timeout,
            &mut p.shutdown_timeout,
        ),
    ];
    for ((key, value, slot), (_, max)) in durations.into_iter().zip(DURATION_LIMITS) {
        if let Some(v) = value {
            *slot = parse_duration(key, &v, max)?;
        }
    }
    parse_udp(&mut p, raw.udp_idle_timeout, raw.udp_max_flows)?;
    if let Some(v) = raw.udp_receive_buffer {
        p.udp_receive_buffer = parse_size(&v)
            .filter(|n| (MIN_UDP_RECEIVE_BUFFER..=MAX_UDP_RECEIVE_BUFFER).contains(n))
            .ok_or_else(|| {
                format!(
                    "proxy.udp_receive_buffer \"{}\" is not valid; use a size from 4KiB to 1GiB \
                     (bytes, or a number with KiB, MiB or GiB)",
                    value_text(&v)
                )
            })?;
    }
    if let Some(v) = raw.user {
        match v.as_str() {
            Some(u) if !u.is_empty() && !u.contains(char::is_whitespace) => p.user = u.to_owned(),
            _ => {
                return Err(format!(
                    "proxy.user {:?} is not a user name",
                    value_text(&v)
                ))
            }
        }
    }
    Ok(p)
}

/// The UDP flow settings, each within its documented range.
pub(super) fn parse_udp(
    p: &mut ProxySettings,
    idle: Option<Value>,
    max_flows: Option<Value>,
) -> Result<(), String> {
    if let Some(v) = idle {
        p.udp_idle_timeout = parse_duration("udp_idle_timeout", &v, MAX_UDP_IDLE_TIMEOUT)?;
    }
    if let Some(v) = max_flows {
        p.udp_max_flows = v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_UDP_MAX_FLOWS)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                format!(
                    "proxy.udp_max_flows \"{}\" is not valid; use a whole number from 1 to {MAX_UDP_MAX_FLOWS}",
                    value_text(&v)
                )
            })?;
    }
    Ok(())
}

/// A size in bytes: a whole number, or one followed by KiB, MiB or GiB.
pub(super) fn parse_size(v: &Value) -> Option<usize> {
    if let Some(n) = v.as_u64() {
        return usize::try_from(n).ok();
    }
    let s = v.as_str()?.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let shift = match unit.trim() {
        "" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    let n: usize = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

pub(super) fn parse_rules(raw: RawRules) -> Result<RulesSettings, String> {
    let mut r = RulesSettings::default();
    if let Some(v) = raw.backend {
        r.backend = value_text(&v)
            .parse()
            .map_err(|m: String| format!("rules.backend: {m}"))?;
    }
    if let Some(v) = raw.enable_forwarding {
        r.enable_forwarding = v.as_bool().ok_or_else(|| {
            format!(
                "rules.enable_forwarding {:?} is not valid; use true or false",
                value_text(&v)
            )
        })?;
    }
    Ok(r)
}
