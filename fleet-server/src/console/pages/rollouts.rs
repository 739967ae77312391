//! Rollouts: progress per device state, start (label selection, canary), promote, halt,
//! resume, roll back — each behind a confirmation; one rollout's devices.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::{html, Markup};

use super::{or_error, query_pairs, session};
use crate::console::layout::{self, action, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::views::RolloutSummary;
use crate::store::now_ms;
use crate::types::{DeviceRolloutState, Role, RolloutAction, RolloutPhase, RolloutState};

/// A bar of the targeted devices per state (SVG; the counts are also in the legend).
fn progress_bar(r: &RolloutSummary) -> Markup {
    let total = r.targeted.max(1) as f64;
    let mut x = 0.0;
    let mut segs = Vec::new();
    for s in DeviceRolloutState::ALL {
        let n = r.progress.get(s).copied().unwrap_or(0) as f64;
        if n > 0.0 {
            let w = n / total * 100.0;
            segs.push((*s, x, w));
            x += w;
        }
    }
    let label: Vec<String> = DeviceRolloutState::ALL
        .iter()
        .filter_map(|s| {
            let n = r.progress.get(s).copied().unwrap_or(0);
            (n > 0).then(|| format!("{n} {}", s.as_str().replace('_', " ")))
        })
        .collect();
    html! {
        svg.progress viewBox="0 0 100 6" preserveAspectRatio="none" role="img"
            aria-label=(format!("{} targeted: {}", r.targeted, if label.is_empty() { "none".into() } else { label.join(", ") })) {
            @for (s, x, w) in &segs {
                rect class={"drs-" (s.as_str())} x=(format!("{x:.3}")) y="0" width=(format!("{w:.3}")) height="6" {}
            }
        }
        p.legend {
            @for s in DeviceRolloutState::ALL {
                @let n = r.progress.get(s).copied().unwrap_or(0);
                @if n > 0 { span class={"swatch drs-" (s.as_str())} {} (s.as_str().replace('_', " ")) " " strong { (n) } " " }
            }
            @if r.targeted == 0 { span.muted { "no device matches its selector" } }
        }
    }
}

/// How the canaries did (what a promotion is decided on).
fn canary_results(r: &RolloutSummary) -> Markup {
    let n: i64 = r.canaries.values().sum();
    if n == 0 {
        return html! {};
    }
    let c = |s: DeviceRolloutState| r.canaries.get(&s).copied().unwrap_or(0);
    let failed = c(DeviceRolloutState::Failed) + c(DeviceRolloutState::RolledBack);
    html! {
        p.canaries {
            "Canaries: " strong { (c(DeviceRolloutState::Healthy)) " healthy" }
            @if failed > 0 { ", " strong.error { (failed) " failed" } }
            ", " (n - c(DeviceRolloutState::Healthy) - failed) " still updating, of " (n)
        }
    }
}

fn actions(r: &RolloutSummary) -> Markup {
    let id = &r.rollout.id;
    let what = format!(
        "{} {} #{}",
        r.rollout.kind, r.rollout.bundle, r.rollout.version_number
    );
    let url = |a: RolloutAction| format!("/v1/operator/rollouts/{id}/{}", a.as_str());
    html! {
        div.buttons {
            @if r.rollout.state == RolloutState::Active && r.rollout.phase == RolloutPhase::Canary {
                (action("POST", &url(RolloutAction::Promote), "Promote", Some(&format!("Promote rollout {id} of {what} from its canaries to every targeted device ({} devices)?", r.targeted)), ""))
            }
            @if r.rollout.state == RolloutState::Active {
                (action("POST", &url(RolloutAction::Halt), "Halt", Some(&format!("Halt rollout {id} of {what}? Devices keep what they run; no device gets it any more.")), ""))
            }
            @if r.rollout.state == RolloutState::Halted {
                (action("POST", &url(RolloutAction::Resume), "Resume", Some(&format!("Resume rollout {id} of {what}?")), ""))
            }
            @if matches!(r.rollout.state, RolloutState::Active | RolloutState::Halted) {
                (action("POST", &url(RolloutAction::Rollback), "Roll back", Some(&format!("Roll back rollout {id}? Its devices go back to the version of the previous rollout of {}.", r.rollout.bundle)), "danger"))
            }
        }
    }
}

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Rollouts";
    let rollouts = or_error!(a.rollouts().await, s, Nav::Rollouts, title);
    let bundles = or_error!(a.bundles().await, s, Nav::Rollouts, title);
    let pairs = query_pairs(&uri);
    let pre = |k: &str| {
        pairs
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let operator = s.principal.role >= Role::Operator;
    let now = now_ms();
    let mut names: Vec<&str> = bundles.iter().map(|b| b.row.name.as_str()).collect();
    names.dedup();
    let configs = or_error!(a.configs().await, s, Nav::Rollouts, title);
    let mut config_names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    config_names.sort_unstable();
    config_names.dedup();
    let start = html! {
        @if operator {
            section #start .actions aria-labelledby="h-start" {
                h2 #h-start { "Start a rollout" }
                form.api data-url="/v1/operator/rollouts" data-method="POST"
                    data-confirm="Start this rollout? The selected devices (canaries first, if any) download and install it at their next check-in." {
                    div.grid {
                        label { "What "
                            select name="kind" {
                                option value="bundle" selected[pre("kind").is_empty() || pre("kind") == "bundle"] { "model bundle" }
                                option value="config" selected[pre("kind") == "config"] { "agent configuration" }
                                option value="agent" selected[pre("kind") == "agent"] { "agent software (edge-agent)" }
                            }
                        }
                        label { "Name "
                            input type="text" name="bundle" required list="rollout-names" value=(pre("bundle"))
                                placeholder="bundle, configuration, or edge-agent";
                            datalist #rollout-names {
                                @for n in &names { option value=(n) {} }
                                @for n in &config_names { option value=(n) {} }
                                option value="edge-agent" {}
                            }
                        }
                        label { "Version number " input type="number" name="version_number" data-type="int" min="1" required value=(pre("version_number")); }
                        label { "Devices with labels " input type="text" name="selector" data-type="list" placeholder="site=plant1 (empty: every device)"; }
                        label { "Canary label " input type="text" name="canary_label" placeholder="canary"; }
                        label { "or canary % " input type="number" name="canary_percent" data-type="int" min="1" max="100"; }
                        label { "Halt after failures " input type="number" name="max_failures" data-type="int" min="1" value="1"; }
                    }
                    button type="submit" { "Start rollout" }
                }
            }
            section #push-config .actions aria-labelledby="h-push-config" {
                h2 #h-push-config { "Push an agent configuration" }
                p.muted { "A whole agent configuration file (TOML). It is stored as the next version of the name and then rolled out above (what: agent configuration). Inline secrets are refused: use { file = \"…\" } or { env = \"…\" }, resolved on the device." }
                form.api data-url-template="/v1/operator/configs/{name}" data-method="POST" {
                    label { "Configuration name " input type="text" name="name" data-path required pattern="[A-Za-z0-9._\\-]{1,64}"; }
                    label { "File " textarea name="fragments" data-type="fragment" data-fragment="console" rows="12" required {} }
                    button type="submit" { "Push configuration" }
                }
                @if !configs.is_empty() {
                    p.muted { "Stored: " @for c in configs.iter().rev().take(10) { (c.name) " #" (c.version_number) " " } }
                }
            }
        }
    };
    let body = html! {
        (live(&uri, html! {
            @if rollouts.is_empty() { p.muted { "No rollout yet." } }
            @for r in &rollouts {
                article.rollout aria-labelledby={"h-r-" (r.rollout.id)} {
                    h2 id={"h-r-" (r.rollout.id)} {
                        a href={"/console/rollouts/" (r.rollout.id)} { (r.rollout.kind) " " (r.rollout.bundle) " #" (r.rollout.version_number) }
                        " " (fmt::rollout_state(r.rollout.state))
                        " " span.muted { "phase " (r.rollout.phase.as_str()) }
                    }
                    p.muted {
                        (r.rollout.id) " · to " @if r.rollout.selector.is_empty() { "every device" } @else { (r.rollout.selector.join(", ")) }
                        @if let Some(l) = &r.rollout.canary_label { " · canaries: " (l) }
                        @if let Some(p) = r.rollout.canary_percent { " · canaries: " (p) " %" }
                        " · started " (fmt::when(Some(r.rollout.created_at), now)) " by " (r.rollout.created_by)
                        " · halts after " (r.rollout.max_failures) " failure(s)"
                    }
                    (progress_bar(r))
                    (canary_results(r))
                    @if operator { (actions(r)) }
                }
            }
        }))
        (start)
    };
    layout::page(&s, Nav::Rollouts, title, body)
}

pub async fn detail(
    State(c): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Rollout";
    let r = or_error!(a.rollout(&id).await, s, Nav::Rollouts, title);
    let operator = s.principal.role >= Role::Operator;
    let now = now_ms();
    let sum = &r.summary;
    let body = live(
        &uri,
        html! {
            p {
                (fmt::rollout_state(sum.rollout.state)) " phase " (sum.rollout.phase.as_str())
                " · " (sum.rollout.id) " · to "
                @if sum.rollout.selector.is_empty() { "every device" } @else { (sum.rollout.selector.join(", ")) }
            }
            (progress_bar(sum))
            (canary_results(sum))
            @if operator { (actions(sum)) }
            (table_wrap("Devices of this rollout", html! { table {
                thead { tr {
                    th scope="col" { "Device" } th scope="col" { "Canary" } th scope="col" { "State" }
                    th scope="col" { "Reported" } th scope="col" { "Detail" } th scope="col" { "Last seen" }
                } }
                tbody { @for d in &r.devices { tr {
                    td { a href={"/console/devices/" (d.id)} { (d.name) } }
                    td { (if d.canary { "yes" } else { "" }) }
                    td { (fmt::device_rollout_state(d.state)) }
                    td { (fmt::when(d.reported_at, now)) }
                    td.wrap { (d.detail.as_deref().unwrap_or("")) }
                    td { (fmt::when(d.last_seen, now)) }
                } } }
            } }))
        },
    );
    layout::page(
        &s,
        Nav::Rollouts,
        &format!(
            "Rollout of {} #{}",
            sum.rollout.bundle, sum.rollout.version_number
        ),
        body,
    )
}
