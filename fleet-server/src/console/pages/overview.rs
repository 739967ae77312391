//! The fleet at a glance: devices per state, the devices with problems, rollouts in
//! flight, raised alarms, and the same counts per label group.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::html;

use super::{or_error, session};
use crate::console::layout::{self, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::views::AlarmListQuery;
use crate::store::now_ms;
use crate::types::DeviceRolloutState;

/// Targeted devices that run the rollout's version (healthy, or applied without a report).
fn running(r: &crate::service::views::RolloutSummary) -> i64 {
    [DeviceRolloutState::Healthy, DeviceRolloutState::Applied]
        .iter()
        .map(|s| r.progress.get(s).copied().unwrap_or(0))
        .sum()
}

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Fleet overview";
    let ov = or_error!(a.overview().await, s, Nav::Overview, title);
    let rollouts = or_error!(a.rollouts_in_flight().await, s, Nav::Overview, title);
    let alarms = or_error!(
        a.alarms(&AlarmListQuery {
            active_only: true,
            limit: 8,
            ..Default::default()
        })
        .await,
        s,
        Nav::Overview,
        title
    );
    let now = now_ms();
    let k = &ov.counts;
    let card = |label: &str, n: i64, href: &str, class: &str| {
        html! {
            a class={"card " (class)} href=(href) {
                span.n { (fmt::count(n)) }
                span.l { (label) }
            }
        }
    };
    let active: Vec<_> = rollouts.iter().collect();
    let body = live(
        &uri,
        html! {
            section aria-labelledby="h-counts" {
                h2 #h-counts .visually-hidden { "Devices by state" }
                div.cards {
                    (card("devices", k.total, "/console/devices", "all"))
                    (card("online", k.online, "/console/devices?state=online", "online"))
                    (card("stale", k.stale, "/console/devices?state=stale", "stale"))
                    (card("offline", k.offline, "/console/devices?state=offline", "offline"))
                    (card("revoked", k.revoked, "/console/devices?state=revoked", "revoked"))
                    (card("with problems", k.with_problems, "/console/devices?problem=any", "problems"))
                }
                p.muted {
                    "Online: checked in within " (ov.online_within_s) " s; offline: not seen for "
                    (ov.offline_after_s / 60) " min; devices check in every " (ov.checkin_s) " s."
                }
            }
            section aria-labelledby="h-problems" {
                h2 #h-problems { "Devices with problems" }
                @if ov.problem_devices.is_empty() {
                    p.ok { "No device has a problem." }
                } @else {
                    (table_wrap("Devices with problems", html! {
                        table {
                            thead { tr {
                                th scope="col" { "Device" } th scope="col" { "State" }
                                th scope="col" { "Problems" } th scope="col" { "Last error" }
                                th scope="col" { "Backlog" } th scope="col" { "Last seen" }
                            } }
                            tbody {
                                @for d in &ov.problem_devices {
                                    tr {
                                        td { a href={"/console/devices/" (d.id)} { (d.name) } }
                                        td { (fmt::device_state(d.state)) }
                                        td { @for p in &d.problems { (fmt::problem(*p)) " " } }
                                        td.wrap { (d.last_error.as_deref().unwrap_or("")) }
                                        td.num { (fmt::count(d.backlog)) }
                                        td { (fmt::when(d.last_seen, now)) }
                                    }
                                }
                            }
                        }
                    }))
                    @if k.with_problems > ov.problem_devices.len() as i64 {
                        p { a href="/console/devices?problem=any" { "All " (k.with_problems) " devices with problems" } }
                    }
                }
            }
            section aria-labelledby="h-rollouts" {
                h2 #h-rollouts { "Rollouts in flight" }
                @if active.is_empty() {
                    p.muted { "None." }
                } @else {
                    ul.plain {
                        @for r in &active {
                            li {
                                a href={"/console/rollouts/" (r.rollout.id)} {
                                    (r.rollout.bundle) " #" (r.rollout.version_number)
                                }
                                " · " (r.rollout.phase.as_str()) " · "
                                (running(r)) " of " (r.targeted) " run it"
                                @let failed = r.progress.get(&DeviceRolloutState::Failed).copied().unwrap_or(0)
                                    + r.progress.get(&DeviceRolloutState::RolledBack).copied().unwrap_or(0);
                                @if failed > 0 { ", " strong { (failed) " failed" } }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="h-alarms" {
                h2 #h-alarms { "Raised alarms" }
                @if alarms.alarms.is_empty() {
                    p.ok { "No alarm is raised." }
                } @else {
                    ul.plain {
                        @for al in &alarms.alarms {
                            li {
                                span class={"badge kind-" (al.kind.as_str())} { (al.kind.as_str()) }
                                " " a href={"/console/devices/" (al.device_id)} { (al.device_name) }
                                " · " (al.model) " · " (al.subject)
                                " · " (fmt::when(Some(al.updated_at), now))
                            }
                        }
                    }
                    p { a href="/console/alarms?active=true" { "All " (alarms.total) " raised alarms" } }
                }
            }
            section aria-labelledby="h-groups" {
                h2 #h-groups { "By label" }
                @if ov.groups.is_empty() {
                    p.muted { "No device carries a label." }
                } @else {
                    (table_wrap("Devices by label", html! {
                        table {
                            thead { tr {
                                th scope="col" { "Label" } th scope="col" { "Devices" }
                                th scope="col" { "Online" } th scope="col" { "Stale" }
                                th scope="col" { "Offline" } th scope="col" { "Revoked" }
                                th scope="col" { "With problems" }
                            } }
                            tbody {
                                @for g in &ov.groups {
                                    tr {
                                        th scope="row" { a href={"/console/devices?label=" (crate::drift::percent_encode(&g.label))} { (g.label) } }
                                        td.num { (g.counts.total) }
                                        td.num { (g.counts.online) }
                                        td.num { (g.counts.stale) }
                                        td.num { (g.counts.offline) }
                                        td.num { (g.counts.revoked) }
                                        td.num { (g.counts.with_problems) }
                                    }
                                }
                            }
                        }
                    }))
                }
            }
        },
    );
    layout::page(&s, Nav::Overview, title, body)
}
