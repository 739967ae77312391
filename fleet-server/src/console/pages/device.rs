//! One device: status, models with hashes, streams (backlog and drops over time), drift per
//! feature over time and one feature's histogram against the bundle's reference, updates,
//! rollouts, alarms, predictions; labels and revocation for operators.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::{html, Markup};
use serde_json::json;

use super::{href, or_error, query_pairs, session};
use crate::console::layout::{self, action, chart, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::drift::{DriftRecordOut, RecordColumnOut};
use crate::service::views::{DeviceDriftQuery, HistoryQuery};
use crate::store::now_ms;
use crate::types::Role;

/// Drift records a device page charts at most.
const DRIFT_POINTS: i64 = 200;

pub async fn page(
    State(c): State<Console>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Device";
    let d = or_error!(a.device(&id).await, s, Nav::Devices, title);
    let pairs = query_pairs(&uri);
    let param = |k: &str| {
        pairs
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let history = or_error!(
        a.device_history(&id, &HistoryQuery::default()).await,
        s,
        Nav::Devices,
        title
    );
    let predictions = or_error!(a.device_predictions(&id, 10).await, s, Nav::Devices, title);
    let config = or_error!(a.device_config(&id).await, s, Nav::Devices, title);
    let agent = or_error!(a.device_agent(&id).await, s, Nav::Devices, title);
    let commands = or_error!(a.device_commands(&id).await, s, Nav::Devices, title);
    // The bundle whose drift is shown: asked for, else the first running model's.
    let running: Vec<(String, String)> = d
        .status
        .as_ref()
        .map(|st| {
            st.models
                .iter()
                .map(|m| (m.bundle.clone(), m.model.clone()))
                .collect()
        })
        .unwrap_or_default();
    let bundle = param("bundle").or_else(|| running.first().map(|m| m.0.clone()));
    let records = match &bundle {
        Some(b) => or_error!(
            a.device_drift(
                &id,
                &DeviceDriftQuery {
                    bundle: Some(b.clone()),
                    since_ns: None,
                    limit: DRIFT_POINTS,
                },
            )
            .await,
            s,
            Nav::Devices,
            title
        ),
        None => Vec::new(),
    };
    let latest = records.last();
    let feature = param("feature").or_else(|| {
        latest.and_then(|r| {
            r.columns
                .iter()
                .find(|c| c.drifting)
                .or(r.columns.first())
                .map(|c| c.name.clone())
        })
    });
    let reference = match latest {
        Some(r) => c
            .service
            .registry()
            .manifest(
                &r.bundle,
                i64::try_from(r.version_number).unwrap_or(i64::MAX),
            )
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let now = now_ms();
    let dev = &d.device;
    let operator = s.principal.role >= Role::Operator;

    let streams_chart = {
        let names: Vec<String> = history
            .last()
            .map(|h| h.streams.iter().map(|s| s.stream.clone()).collect())
            .unwrap_or_default();
        let x: Vec<f64> = history.iter().map(|h| h.at as f64 / 1000.0).collect();
        let mut series: Vec<serde_json::Value> = names
            .iter()
            .map(|n| {
                json!({"label": format!("{n} backlog"), "values": history.iter().map(|h| {
                    h.streams.iter().find(|s| &s.stream == n).map(|s| s.backlog as f64)
                }).collect::<Vec<_>>()})
            })
            .collect();
        series.push(json!({"label": "dropped (all streams)", "values": history.iter().map(|h| Some(h.dropped as f64)).collect::<Vec<_>>(), "dash": true}));
        json!({"x": x, "series": series, "y": "records"})
    };
    let drift_chart = {
        let cols: Vec<String> = latest
            .map(|r| r.columns.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let metric = latest.map_or("psi", |r| r.metric.name());
        let x: Vec<f64> = records.iter().map(|r| r.end_ns as f64 / 1e9).collect();
        let series: Vec<serde_json::Value> = cols
            .iter()
            .map(|name| {
                json!({"label": name, "values": records.iter().map(|r| {
                    r.columns.iter().find(|c| &c.name == name)
                        .and_then(|c| c.scores.map(|s| metric_value(metric, &s)))
                }).collect::<Vec<_>>()})
            })
            .collect();
        json!({"x": x, "series": series, "y": metric})
    };

    let actions: Markup = if operator {
        html! {
            section.actions aria-labelledby="h-act" {
                h2 #h-act { "Actions" }
                form.api data-url={"/v1/operator/devices/" (dev.id) "/labels"} data-method="PUT"
                    data-confirm={"Replace the labels of " (dev.name) "? Rollouts and drift groups follow labels."} {
                    label for="labels" { "Labels (comma or space separated)" }
                    input #labels type="text" name="labels" data-type="list" value=(dev.labels.join(", "));
                    button type="submit" { "Save labels" }
                }
                @if dev.revoked_at.is_none() {
                    (action("POST", &format!("/v1/operator/devices/{}/revoke", dev.id), "Revoke device",
                        Some(&format!("Revoke {}? Its certificate is refused from its next request on; it must enroll again with a new token.", dev.name)), "danger"))
                }
            }
        }
    } else {
        html! {}
    };

    let body = html! {
        (live(&uri, html! {
            section aria-labelledby="h-status" {
                h2 #h-status { (dev.name) " " (fmt::device_state(dev.state)) }
                dl.facts {
                    dt { "Device id" } dd.mono { (dev.id) }
                    dt { "Labels" } dd { @for l in &dev.labels { span.label { (l) } " " } }
                    dt { "Last check-in" } dd { (fmt::when(dev.last_seen, now)) }
                    dt { "Enrolled" } dd { (fmt::utc(dev.enrolled_at)) }
                    @if let Some(x) = dev.cert_expires_at { dt { "Certificate expires" } dd { (fmt::utc(x)) " (renewed automatically)" } }
                    @if let Some(r) = dev.revoked_at { dt { "Revoked" } dd { (fmt::utc(r)) } }
                    dt { "Agent version" } dd { (dev.agent_version.as_deref().unwrap_or("–")) }
                    @if let Some(st) = &d.status { dt { "Uptime" } dd { (st.uptime_s / 3600) " h " ((st.uptime_s % 3600) / 60) " min" } }
                    dt { "Problems" } dd {
                        @if dev.problems.is_empty() { span.ok { "none" } }
                        @for p in &dev.problems { (fmt::problem(*p)) " " }
                    }
                    dt { "Last error" } dd.wrap { (dev.last_error.as_deref().unwrap_or("–")) }
                }
                @if !d.errors.is_empty() {
                    h3 { "Reported errors" }
                    ul.plain { @for e in &d.errors { li { (fmt::when(Some(e.at), now)) " · " span.wrap { (e.error) } } } }
                }
            }
            section aria-labelledby="h-models" {
                h2 #h-models { "Models" }
                @match &d.status {
                    Some(st) if !st.models.is_empty() => {
                        (table_wrap("Models", html! { table {
                            thead { tr { th scope="col" { "Model" } th scope="col" { "Bundle" } th scope="col" { "Version" } th scope="col" { "SHA-256" } } }
                            tbody { @for m in &st.models { tr {
                                td { (m.model) } td { (m.bundle) }
                                td { (m.version) " (#" (m.version_number) ")" }
                                td.mono title=(m.sha256) { (fmt::short_sha(&m.sha256)) "…" }
                            } } }
                        } }))
                    }
                    _ => p.muted { "No model reported." },
                }
            }
            section aria-labelledby="h-streams" {
                h2 #h-streams { "Outbox streams" }
                (table_wrap("Streams", html! { table {
                    thead { tr {
                        th scope="col" { "Stream" } th scope="col" { "Backlog" } th scope="col" { "Bytes" }
                        th scope="col" { "Dropped" } th scope="col" { "Stored here" } th scope="col" { "Acked through" }
                        th scope="col" { "Lost on device" }
                    } }
                    tbody {
                        @for st in d.status.as_ref().map(|s| s.streams.as_slice()).unwrap_or_default() {
                            @let mark = d.streams.iter().find(|m| m.stream == st.stream);
                            tr {
                                th scope="row" { (st.stream) }
                                td.num { (fmt::count(st.backlog as i64)) }
                                td.num { (fmt::bytes(st.bytes as i64)) }
                                td.num { (fmt::count(st.dropped as i64)) }
                                td.num { (mark.map_or(0, |m| m.records)) }
                                td.num { (mark.map_or(0, |m| m.acked_through)) }
                                td.num { (mark.map_or(0, |m| m.lost_on_device)) }
                            }
                        }
                    }
                } }))
                figure {
                    (chart("streams", "Backlog and drops per stream, last 24 h", &streams_chart.to_string()))
                    figcaption { "Backlog per stream and records dropped, at each status point (one per minute at most)." }
                }
            }
            section #drift aria-labelledby="h-drift" {
                h2 #h-drift { "Drift" }
                @if running.len() > 1 {
                    p { "Bundle: "
                        @for (b, _) in &running {
                            a href=(href(&format!("/console/devices/{}", dev.id), &[("bundle".into(), b.clone())])) { (b) } " "
                        }
                    }
                }
                @if records.is_empty() {
                    p.muted { "No drift records from this device yet." }
                } @else {
                    figure {
                        (chart("drift", "Drift per feature over time", &drift_chart.to_string()))
                        figcaption { "Each feature's " (latest.map_or("psi", |r| r.metric.name())) " against the bundle's reference, per drift interval." }
                    }
                    @if let (Some(r), Some(f)) = (latest, feature.as_deref()) {
                        (histogram(r, f, reference.as_deref(), &dev.id, bundle.as_deref().unwrap_or("")))
                    }
                }
            }
            section aria-labelledby="h-updates" {
                h2 #h-updates { "Model updates" }
                @if d.updates.is_empty() { p.muted { "None yet." } } @else {
                    (table_wrap("Updates", html! { table {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Bundle" } th scope="col" { "From → to" } th scope="col" { "Outcome" } th scope="col" { "Method" } th scope="col" { "Bytes" } th scope="col" { "Detail" } } }
                        tbody { @for u in &d.updates { tr {
                            td { (fmt::when(Some(u.at), now)) } td { (u.bundle) }
                            td { "#" (u.from_version_number) " → #" (u.to_version_number) }
                            td { span class={"badge outcome-" (u.outcome.as_str())} { (u.outcome.as_str().replace('_', " ")) } }
                            td { (u.method) } td.num { (fmt::bytes(u.bytes)) } td.wrap { (u.detail) }
                        } } }
                    } }))
                }
            }
            section aria-labelledby="h-config" {
                h2 #h-config { "Configuration" }
                p {
                    span class={"badge config-" (config.state)} { (config.state.replace('_', " ")) }
                    " Runs "
                    @match (&config.applied, &config.reported_sha256) {
                        (Some((n, v)), _) => { (n) " #" (v) }
                        (None, Some(sha)) => { "a local file " span.mono title=(sha) { (fmt::short_sha(sha)) "…" } }
                        (None, None) => { "an unknown file (no report yet)" }
                    }
                    @if let Some((n, v, sha, rid)) = &config.desired {
                        "; the fleet wants " a href={"/console/rollouts/" (rid)} { (n) " #" (v) }
                        " " span.mono title=(sha) { (fmt::short_sha(sha)) "…" }
                    }
                    @if let Some(p) = &config.pending { "; checking " span.mono title=(p) { (fmt::short_sha(p)) "…" } }
                    "."
                }
                @if !config.reports.is_empty() {
                    (table_wrap("Configuration reports", html! { table {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Configuration" } th scope="col" { "Outcome" } th scope="col" { "Applied by" } th scope="col" { "Detail" } } }
                        tbody { @for r in &config.reports { tr {
                            td { (fmt::when(Some(r.at), now)) } td { (r.name) " #" (r.version_number) }
                            td { span class={"badge outcome-" (r.outcome)} { (r.outcome.replace('_', " ")) } }
                            td { (r.applied_by.replace('_', " ")) }
                            td.wrap { (r.detail) @for e in &r.errors { br; span.mono { (e) } } }
                        } } }
                    } }))
                }
            }
            section aria-labelledby="h-agent" {
                h2 #h-agent { "Agent software" }
                p {
                    span class={"badge config-" (if agent.state == "updating" { "applying" } else { agent.state.as_str() })} { (agent.state.replace('_', " ")) }
                    " Runs "
                    @match (&agent.version, agent.release) {
                        (Some(v), Some(n)) => { "edge-agent " (v) " (fleet release #" (n) ")" }
                        (Some(v), None) => { "edge-agent " (v) " (its installed binary)" }
                        (None, _) => { "an agent that does not report its software (no check-in with it yet)" }
                    }
                    @if let Some(t) = &agent.target { " on " span.mono { (t) } }
                    @if let Some((n, rid)) = &agent.desired {
                        "; the fleet wants " a href={"/console/rollouts/" (rid)} { "release #" (n) }
                    }
                    @if let Some(p) = &agent.pending { "; checking " span.mono title=(p) { (fmt::short_sha(p)) "…" } }
                    "."
                }
                @if !agent.reports.is_empty() {
                    (table_wrap("Agent release reports", html! { table {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Release" } th scope="col" { "Outcome" } th scope="col" { "Method" } th scope="col" { "Bytes" } th scope="col" { "Detail" } } }
                        tbody { @for r in &agent.reports { tr {
                            td { (fmt::when(Some(r.at), now)) } td { (r.version) " #" (r.version_number) " (from " (r.from_version) ")" }
                            td { span class={"badge outcome-" (r.outcome)} { (r.outcome.replace('_', " ")) } }
                            td { (r.method) } td.num { (fmt::bytes(r.downloaded_bytes)) } td.wrap { (r.detail) }
                        } } }
                    } }))
                }
            }
            section aria-labelledby="h-commands" {
                h2 #h-commands { "Commands" }
                @if operator {
                    @let url = format!("/v1/operator/devices/{}/commands", dev.id);
                    @let hour_ago = now - 3_600_000;
                    p.actions {
                        (layout::action_body("POST", &url, "Restart", Some(&format!("Restart the agent on {}? It answers, then exits for systemd to start it again.", dev.name)), "", Some(r#"{"action":{"kind":"restart"}}"#)))
                        (layout::action_body("POST", &url, "Reload bundles", None, "", Some(r#"{"action":{"kind":"reload_bundles"}}"#)))
                        (layout::action_body("POST", &url, "Sparkplug rebirth", None, "", Some(r#"{"action":{"kind":"rebirth"}}"#)))
                        (layout::action_body("POST", &url, "Resync", None, "", Some(r#"{"action":{"kind":"resync"}}"#)))
                        (layout::action_body("POST", &url, "Fetch logs (last hour)", None, "", Some(&json!({"action": {"kind": "logs", "since_ms": hour_ago, "until_ms": null, "level": "info", "max_bytes": 262_144}}).to_string())))
                        (layout::action_body("POST", &url, "Fetch diagnostics", None, "", Some(r#"{"action":{"kind":"diagnostics","max_bytes":1048576}}"#)))
                    }
                    p.muted { "The device runs a command at its next check-in and answers; logs and diagnostics open from the list below." }
                }
                @if commands.is_empty() { p.muted { "No command sent to this device yet." } } @else {
                    (table_wrap("Commands", html! { table {
                        thead { tr { th scope="col" { "Sent" } th scope="col" { "Command" } th scope="col" { "By" } th scope="col" { "State" } th scope="col" { "Detail" } th scope="col" { "Attachment" } } }
                        tbody { @for c in commands.iter().take(20) { tr {
                            td { (fmt::when(Some(c.command.created_at), now)) }
                            td { (serde_json::to_value(&c.command.action).ok().and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string)).unwrap_or_default().replace('_', " ")) }
                            td { (c.command.created_by) }
                            td { span class={"badge outcome-" (c.state)} { (c.state) } }
                            td.wrap { (c.command.detail.as_deref().unwrap_or("")) }
                            td { @if c.command.attachment_bytes > 0 {
                                @if operator { a href={"/v1/operator/commands/" (c.command.id)} { (fmt::bytes(c.command.attachment_bytes)) } } @else { (fmt::bytes(c.command.attachment_bytes)) }
                            } }
                        } } }
                    } }))
                }
            }
            section aria-labelledby="h-rollouts" {
                h2 #h-rollouts { "Rollouts" }
                @if d.rollouts.is_empty() { p.muted { "No rollout targets this device." } } @else {
                    ul.plain { @for r in &d.rollouts { li {
                        a href={"/console/rollouts/" (r.rollout)} { (r.bundle) " #" (r.version_number) }
                        " " (fmt::device_rollout_state(r.state))
                    } } }
                }
            }
            section aria-labelledby="h-alarms" {
                h2 #h-alarms { "Recent alarms" }
                @if d.alarms.is_empty() { p.muted { "None." } } @else {
                    ul.plain { @for al in &d.alarms { li {
                        span class={"badge kind-" (al.kind.as_str())} { (al.kind.as_str()) } " "
                        (al.model) " · " (al.subject) " · " (if al.active { "raised" } else { "cleared" })
                        " · " (fmt::when(Some(al.updated_at), now))
                    } } }
                }
            }
            section aria-labelledby="h-pred" {
                h2 #h-pred { "Recent predictions" }
                @if predictions.is_empty() { p.muted { "None uploaded yet." } } @else {
                    (table_wrap("Predictions", html! { table {
                        thead { tr { th scope="col" { "Window end" } th scope="col" { "Model" } th scope="col" { "Score" } th scope="col" { "Label" } th scope="col" { "Alarm" } } }
                        tbody { @for p in &predictions { tr {
                            td { (fmt::ns(p.end_ns)) } td { (p.model) " (" (p.bundle) " #" (p.version_number) ")" }
                            td.num { (fmt::score(p.score)) } td { (p.label.as_deref().unwrap_or("–")) }
                            td { (match p.alarm { Some(true) => "raised", Some(false) => "–", None => "" }) }
                        } } }
                    } }))
                }
            }
        }))
        (actions)
    };
    layout::page(&s, Nav::Devices, &format!("Device {}", dev.name), body)
}

fn metric_value(metric: &str, s: &edge_wire::drift::DriftScores) -> f64 {
    match metric {
        "js" => s.js,
        "ks" => s.ks,
        "w1_std" => s.w1_std,
        _ => s.psi,
    }
}

/// One feature's histogram in the newest record against the reference's bin shares, as an
/// SVG bar chart (with the numbers in a table for screen readers), and links to the other
/// features.
fn histogram(
    r: &DriftRecordOut,
    feature: &str,
    manifest: Option<&edge_wire::bundle::Manifest>,
    device: &str,
    bundle: &str,
) -> Markup {
    let col: Option<&RecordColumnOut> = r.columns.iter().find(|c| c.name == feature);
    let reference = manifest.and_then(|m| m.reference.features.iter().find(|c| c.name == feature));
    let link = |f: &str| {
        href(
            &format!("/console/devices/{device}"),
            &[
                ("bundle".into(), bundle.into()),
                ("feature".into(), f.into()),
            ],
        ) + "#drift"
    };
    let picker = html! {
        p.features { "Histogram of: "
            @for c in &r.columns {
                @if c.name == feature { strong { (c.name) } " " }
                @else { a href=(link(&c.name)) { (c.name) } " " }
            }
        }
    };
    let (Some(col), Some(reference)) = (col, reference) else {
        return html! { (picker) p.muted { "No reference histogram for " (feature) " (the registry lacks this bundle version)." } };
    };
    let total: u64 = col.bins.iter().sum();
    let n = col.bins.len().min(reference.bin_freqs.len());
    if total == 0 || n == 0 {
        return html! { (picker) p.muted { "No values of " (feature) " in the newest interval." } };
    }
    let dev: Vec<f64> = col.bins[..n]
        .iter()
        .map(|b| *b as f64 / total as f64)
        .collect();
    let refs = &reference.bin_freqs[..n];
    let max = dev
        .iter()
        .chain(refs)
        .cloned()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (w, h, pad) = (640.0, 200.0, 24.0);
    let bw = (w - 2.0 * pad) / n as f64;
    let edge = |i: usize| reference.bin_edges.get(i).copied().unwrap_or(f64::NAN);
    let bin_label = |i: usize| {
        let (lo, hi) = (edge(i), edge(i + 1));
        match (lo.is_finite(), hi.is_finite()) {
            (false, true) => format!("< {hi:.3}"),
            (true, false) => format!("≥ {lo:.3}"),
            _ => format!("{lo:.3} – {hi:.3}"),
        }
    };
    html! {
        (picker)
        figure {
            svg.hist viewBox=(format!("0 0 {w} {h}")) role="img"
                aria-label=(format!("Histogram of {feature}: this device's newest interval against the training reference, {n} bins")) {
                @for i in 0..n {
                    @let x = pad + i as f64 * bw;
                    @let rh = refs[i] / max * (h - 2.0 * pad);
                    @let dh = dev[i] / max * (h - 2.0 * pad);
                    rect.ref x=(format!("{:.1}", x + 1.0)) y=(format!("{:.1}", h - pad - rh)) width=(format!("{:.1}", bw / 2.0 - 1.0)) height=(format!("{:.1}", rh)) {
                        title { (bin_label(i)) ": reference " (format!("{:.1}", refs[i] * 100.0)) " %" }
                    }
                    rect.dev x=(format!("{:.1}", x + bw / 2.0)) y=(format!("{:.1}", h - pad - dh)) width=(format!("{:.1}", bw / 2.0 - 1.0)) height=(format!("{:.1}", dh)) {
                        title { (bin_label(i)) ": this device " (format!("{:.1}", dev[i] * 100.0)) " %" }
                    }
                }
                line.axis x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) {}
            }
            figcaption {
                span.key-ref { "■ reference (training data)" } " "
                span.key-dev { "■ this device, " (r.to) } " · "
                (col.scores.map(|s| format!("PSI {:.3}, KS {:.3}", s.psi, s.ks)).unwrap_or_default())
                @if col.drifting { " · " strong { "drifting" } }
            }
            details {
                summary { "Numbers" }
                table {
                    thead { tr { th scope="col" { "Bin" } th scope="col" { "Reference %" } th scope="col" { "Device %" } } }
                    tbody { @for i in 0..n { tr {
                        td { (bin_label(i)) } td.num { (format!("{:.1}", refs[i] * 100.0)) } td.num { (format!("{:.1}", dev[i] * 100.0)) }
                    } } }
                }
            }
        }
    }
}
