//! How the console writes times, sizes and states.

use maud::{html, Markup};

use crate::types::{DeviceRolloutState, DeviceState, Problem, RolloutState};

/// `2026-12-06 14:03:07 UTC` of a Unix-ms time.
pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A time as relative text with the absolute time in a `<time>` element.
pub fn when(ms: Option<i64>, now: i64) -> Markup {
    match ms {
        Some(ms) => {
            html! { time datetime=(crate::drift::rfc3339(ms * 1_000_000)) title=(utc(ms)) { (ago(ms, now)) } }
        }
        None => html! { span.muted { "never" } },
    }
}

/// An RFC 3339 time of Unix ns, shortened for tables.
pub fn ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// A number with thin grouping (`12 345`).
pub fn count(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn score(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.3}"))
}

pub fn device_state(s: DeviceState) -> Markup {
    html! { span class={"badge state-" (s.as_str())} { (s.as_str()) } }
}

pub fn rollout_state(s: RolloutState) -> Markup {
    html! { span class={"badge rollout-" (s.as_str())} { (s.as_str().replace('_', " ")) } }
}

pub fn device_rollout_state(s: DeviceRolloutState) -> Markup {
    html! { span class={"badge drs-" (s.as_str())} { (s.as_str().replace('_', " ")) } }
}

pub fn problem(p: Problem) -> Markup {
    html! { span class={"badge problem"} { (p.as_str().replace('_', " ")) } }
}

pub fn short_sha(s: &str) -> String {
    s.chars().take(12).collect()
}
