//! Drift: the heatmap of features × devices (or label groups), coloured by score band, each
//! cell a link to its timeline; retrain policies and their events.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::{html, Markup};
use serde_json::json;

use super::{href, or_error, query_pairs, session};
use crate::console::layout::{self, action, chart, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::drift::{self, Band, DriftQuery, Heatmap, HeatmapGroup, HeatmapQuery};
use crate::service::ServiceError;
use crate::store::now_ms;
use crate::types::Role;

fn band_class(b: Band) -> &'static str {
    match b {
        Band::NoData => "band-none",
        Band::Calm => "band-calm",
        Band::Watch => "band-watch",
        Band::Drift => "band-drift",
    }
}

fn legend(h: &Heatmap) -> Markup {
    html! {
        p.legend {
            span class="swatch band-calm" {} "calm (below half the threshold) "
            span class="swatch band-watch" {} "watch (half the threshold or more) "
            span class="swatch band-drift" {} "drift (at or past the threshold) "
            span class="swatch band-none" {} "no data"
            " · metric: " strong { (h.metric.name()) }
        }
    }
}

/// The timeline of one heatmap cell.
fn timeline_link(h: &Heatmap, row: &drift::HeatRow, col: &str) -> String {
    let mut t = vec![
        ("bundle".to_string(), h.bundle.clone()),
        (
            "version_number".to_string(),
            h.version_number.map(|v| v.to_string()).unwrap_or_default(),
        ),
        ("feature".to_string(), col.to_string()),
    ];
    match &h.group_by {
        HeatmapGroup::Device => t.push((
            "device".into(),
            row.devices.first().cloned().unwrap_or_default(),
        )),
        HeatmapGroup::Label(_) => t.push(("select".into(), row.name.clone())),
    }
    href("/console/drift/timeline", &t)
}

/// `pairs` with `k` set to `v`.
fn with_param(pairs: &[(String, String)], k: &str, v: &str) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = pairs.iter().filter(|(pk, _)| pk != k).cloned().collect();
    p.push((k.to_string(), v.to_string()));
    p
}

fn get(pairs: &[(String, String)], k: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(pk, _)| pk == k)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Drift";
    let pairs = query_pairs(&uri);
    let bundles = or_error!(a.bundles().await, s, Nav::Drift, title);
    let mut names: Vec<String> = bundles.iter().map(|b| b.row.name.clone()).collect();
    names.dedup();
    let overview = or_error!(a.overview().await, s, Nav::Drift, title);
    let mut keys: Vec<String> = overview
        .groups
        .iter()
        .filter_map(|g| g.label.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    keys.dedup();
    let bundle = get(&pairs, "bundle").or_else(|| names.first().cloned());
    let group = get(&pairs, "group_by").unwrap_or_else(|| "device".into());
    let policies = or_error!(a.drift_policies().await, s, Nav::Drift, title);
    let events = or_error!(a.drift_events(None, 20).await, s, Nav::Drift, title);
    let heat = match &bundle {
        Some(b) => {
            let mut q: Vec<(String, String)> = vec![
                ("bundle".into(), b.clone()),
                ("group_by".into(), group.clone()),
            ];
            for k in ["version_number", "since"] {
                if let Some(v) = get(&pairs, k) {
                    q.push((k.into(), v));
                }
            }
            let hq = or_error!(
                HeatmapQuery::from_pairs(&q, drift::now_ns()),
                s,
                Nav::Drift,
                title
            );
            Some(or_error!(a.drift_heatmap(&hq).await, s, Nav::Drift, title))
        }
        None => None,
    };
    let now = now_ms();
    let operator = s.principal.role >= Role::Operator;
    // Setting a policy is for admins: its hook runs a command or calls a URL as the server.
    let admin = s.principal.role >= Role::Admin;
    let selectors = html! {
        form.filters method="get" action="/console/drift" aria-label="Choose the heatmap" {
            label { "Bundle "
                select name="bundle" {
                    @for n in &names { option value=(n) selected[bundle.as_deref() == Some(n.as_str())] { (n) } }
                }
            }
            @if let Some(h) = &heat {
                label { "Version "
                    select name="version_number" {
                        @for (v, n, d) in &h.versions {
                            option value=(v) selected[h.version_number == Some(*v)] { "#" (v) " (" (n) " records, " (d) " devices)" }
                        }
                    }
                }
            }
            label { "Rows "
                select name="group_by" {
                    option value="device" selected[group == "device"] { "devices" }
                    @for k in &keys {
                        @let v = format!("label:{k}");
                        option value=(v) selected[group == v] { "label " (k) }
                    }
                }
            }
            label { "Since "
                select name="since" {
                    @for (v, l) in [("24h", "24 hours"), ("1h", "1 hour"), ("7days", "7 days"), ("30days", "30 days")] {
                        option value=(v) selected[get(&pairs, "since").as_deref() == Some(v)] { (l) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
    };
    let heatmap = match &heat {
        None => html! { p.muted { "No bundle in the registry yet." } },
        Some(h) => html! {
            @if let Some(n) = &h.note { p.muted { (n) } }
            @if !h.rows.is_empty() {
                (legend(h))
                (table_wrap("Drift heatmap", html! {
                    table.heatmap {
                        thead { tr {
                            th scope="col" { (if matches!(h.group_by, HeatmapGroup::Device) { "Device" } else { "Group" }) }
                            @for col in &h.columns { th scope="col" { (col) } }
                            th scope="col" { "Newest record" }
                        } }
                        tbody {
                            @for row in &h.rows {
                                tr {
                                    th scope="row" {
                                        @if matches!(h.group_by, HeatmapGroup::Device) {
                                            a href={"/console/devices/" (row.devices.first().cloned().unwrap_or_default()) "#drift"} { (row.name) }
                                        } @else {
                                            a href={"/console/devices?label=" (crate::drift::percent_encode(&row.name))} { (row.name) }
                                            " " span.muted { "(" (row.devices.len()) ")" }
                                        }
                                        @if row.dataset_drift { " " span.badge.band-drift { "dataset drift" } }
                                    }
                                    @for (i, cell) in row.cells.iter().enumerate() {
                                        @let col = &h.columns[i];
                                        td class=(band_class(cell.band)) {
                                            a href=(timeline_link(h, row, col))
                                                title={(row.name) " · " (col) ": " (fmt::score(cell.value)) " (" (cell.band.as_str().replace('_', " ")) ")"}
                                                { (fmt::score(cell.value)) }
                                        }
                                    }
                                    td { (row.to) }
                                }
                            }
                        }
                    }
                }))
                @if h.total_rows > h.rows.len() { p.muted { "The " (h.rows.len()) " most drifting of " (h.total_rows) " rows." } }
            } @else if h.note.is_none() {
                p.muted { "No drift records in this time range." }
            }
        },
    };
    let body = html! {
        (selectors)
        (live(&uri, html! {
            (heatmap)
            section aria-labelledby="h-policies" {
                h2 #h-policies { "Retrain policies" }
                @if policies.is_empty() { p.muted { "None." } } @else {
                    (table_wrap("Retrain policies", html! { table {
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Bundle" } th scope="col" { "Devices" }
                            th scope="col" { "Bucket" } th scope="col" { "Intervals" } th scope="col" { "Rule" }
                            th scope="col" { "Hook" } th scope="col" { "Updated" }
                            @if operator { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody { @for p in &policies { tr {
                            td { (p.name) } td { (p.bundle) }
                            td { @if p.select.is_empty() { "all" } @else { (p.select.join(", ")) } }
                            td { (p.every) } td.num { (p.intervals) }
                            td.mono { (serde_json::to_string(&p.rule).unwrap_or_default()) }
                            td.mono.wrap { (serde_json::to_string(&p.hook).unwrap_or_default()) }
                            td { (fmt::when(Some(p.updated_at), now)) " by " (p.created_by) }
                            @if operator {
                                td { (action("DELETE", &format!("/v1/operator/drift/policies/{}", crate::drift::percent_encode(&p.name)), "Remove", Some(&format!("Remove the retrain policy {}? Its events stay.", p.name)), "danger")) }
                            }
                        } } }
                    } }))
                }
            }
            section aria-labelledby="h-events" {
                h2 #h-events { "Retrain events" }
                @if events.is_empty() { p.muted { "None." } } @else {
                    (table_wrap("Retrain events", html! { table {
                        thead { tr {
                            th scope="col" { "When" } th scope="col" { "Policy" } th scope="col" { "Bundle" }
                            th scope="col" { "Drifting" } th scope="col" { "Hook" } th scope="col" { "Detail" }
                        } }
                        tbody { @for e in &events { tr {
                            td { (fmt::when(Some(e.created_at), now)) } td { (e.policy) }
                            td { (e.bundle) " #" (e.version_number) }
                            td { (e.from) " – " (e.to) }
                            td { span class={"badge hook-" (e.hook_status)} { (e.hook_status) } }
                            td.wrap { (e.hook_detail) }
                        } } }
                    } }))
                }
            }
        }))
        @if admin {
            section.actions aria-labelledby="h-newpolicy" {
                h2 #h-newpolicy { "Set a retrain policy" }
                form.api data-url-template="/v1/operator/drift/policies/{name}" data-method="PUT"
                    data-confirm="Set this retrain policy? An existing policy of that name is replaced and starts over." {
                    div.grid {
                        label { "Name " input type="text" name="name" required pattern="[A-Za-z0-9._-]{1,64}" data-path="1"; }
                        label { "Bundle " input type="text" name="bundle" required value=(bundle.clone().unwrap_or_default()); }
                        label { "Devices with labels " input type="text" name="select" data-type="list" placeholder="site=plant1"; }
                        label { "Bucket " input type="text" name="every" required value="1h"; }
                        label { "Consecutive buckets " input type="number" name="intervals" data-type="int" min="1" value="3"; }
                        label { "Share of devices drifting " input type="number" name="rule.share" data-type="float" step="0.05" min="0.05" max="1" value="0.5"; }
                        label { "Hook command " input type="text" name="hook.command" placeholder="/usr/local/bin/retrain.sh"; }
                        label { "or hook URL " input type="url" name="hook.url" placeholder="http://ml-pipeline:8080/retrain"; }
                    }
                    button type="submit" { "Set policy" }
                }
            }
        }
    };
    layout::page(&s, Nav::Drift, title, body)
}

/// One feature's drift over time for one device or label group: the merged view per bucket.
pub async fn timeline(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Drift timeline";
    let pairs = query_pairs(&uri);
    let feature = get(&pairs, "feature");
    let every = get(&pairs, "every").unwrap_or_else(|| "10m".into());
    let since = get(&pairs, "since").unwrap_or_else(|| "24h".into());
    let mut q: Vec<(String, String)> = vec![
        ("every".into(), every.clone()),
        ("since".into(), since.clone()),
    ];
    for k in ["bundle", "version_number", "device", "select"] {
        for (pk, v) in &pairs {
            if pk == k && !v.is_empty() {
                q.push((k.into(), v.clone()));
            }
        }
    }
    let dq = or_error!(
        DriftQuery::from_pairs(&q, drift::now_ns()).map_err(ServiceError::from),
        s,
        Nav::Drift,
        title
    );
    let views = or_error!(a.drift_views(&dq).await, s, Nav::Drift, title);
    let who = match (&dq.device, dq.select.first()) {
        (Some(d), _) => format!("device {d}"),
        (None, Some(l)) => format!("devices with {l}"),
        _ => "the fleet".into(),
    };
    let feature = feature.or_else(|| {
        views
            .last()
            .and_then(|v| v.columns.first().map(|c| c.name.clone()))
    });
    let f = feature.clone().unwrap_or_default();
    let x: Vec<f64> = views
        .iter()
        .filter_map(|v| {
            chrono::DateTime::parse_from_rfc3339(v.bucket_from.as_deref().unwrap_or(&v.from)).ok()
        })
        .map(|t| t.timestamp() as f64)
        .collect();
    let col = |v: &drift::DriftView| v.columns.iter().find(|c| c.name == f).cloned();
    let series = json!([
        {"label": "PSI", "values": views.iter().map(|v| col(v).and_then(|c| c.psi)).collect::<Vec<_>>()},
        {"label": "KS", "values": views.iter().map(|v| col(v).and_then(|c| c.ks)).collect::<Vec<_>>()},
        {"label": "JS", "values": views.iter().map(|v| col(v).and_then(|c| c.js)).collect::<Vec<_>>()},
    ]);
    let series_data = json!({"x": x, "series": series, "y": "score"});
    let body = html! {
        p { (dq.bundle) @if let Some(v) = dq.version_number { " #" (v) } " · " (who) " · buckets of " (every) " since " (since) }
        @if let Some(first) = views.last() {
            p.features { "Feature: "
                @for c in &first.columns {
                    @if Some(&c.name) == feature.as_ref() { strong { (c.name) } " " }
                    @else { a href=(href("/console/drift/timeline", &with_param(&pairs, "feature", &c.name))) { (c.name) } " " }
                }
            }
        }
        (live(&uri, html! {
            @if views.is_empty() { p.muted { "No drift records in this range." } } @else {
                figure {
                    (chart("timeline", &format!("Drift of {f}"), &series_data.to_string()))
                    figcaption { "PSI, KS and JS of " (f) " against the bundle's reference, records merged per bucket." }
                }
                (table_wrap("Buckets", html! { table {
                    thead { tr { th scope="col" { "Bucket" } th scope="col" { "Devices" } th scope="col" { "Records" } th scope="col" { "Count" } th scope="col" { "PSI" } th scope="col" { "KS" } th scope="col" { "Drifting" } } }
                    tbody { @for v in views.iter().rev() {
                        @let c = col(v);
                        tr {
                            td { (v.bucket_from.clone().unwrap_or_else(|| v.from.clone())) }
                            td.num { (v.devices.len()) } td.num { (v.records) }
                            td.num { (c.as_ref().map_or(0, |c| c.count)) }
                            td.num { (fmt::score(c.as_ref().and_then(|c| c.psi))) }
                            td.num { (fmt::score(c.as_ref().and_then(|c| c.ks))) }
                            td { (if c.as_ref().is_some_and(|c| c.drifting) { "yes" } else { "" }) }
                        }
                    } }
                } }))
            }
        }))
    };
    layout::page(&s, Nav::Drift, &format!("Drift of {f}"), body)
}
