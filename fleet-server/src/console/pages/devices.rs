//! The device list: filters (label, state, problem, bundle, search), sortable columns,
//! pages. The filters are a plain GET form (the URL is the state), live-updated as you type.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::html;

use super::{href, or_error, query_pairs, session};
use crate::console::layout::{self, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::views::{DeviceQuery, ProblemSelect};
use crate::store::now_ms;
use crate::types::{DeviceSortKey, DeviceState, Problem};

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let title = "Devices";
    let pairs = query_pairs(&uri);
    let q = or_error!(DeviceQuery::from_pairs(&pairs), s, Nav::Devices, title);
    let a = c.service.acting(s.principal.clone());
    let page = or_error!(a.devices(&q).await, s, Nav::Devices, title);
    let now = now_ms();
    // The current filters as pairs, to build sort and page links from.
    let base: Vec<(String, String)> = {
        let mut p = q.to_pairs();
        p.retain(|(k, _)| !matches!(k.as_str(), "sort" | "order" | "offset"));
        p
    };
    let with = |extra: &[(&str, String)]| {
        let mut p = base.clone();
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            p.push((k.to_string(), v.clone()));
        }
        href("/console/devices", &p)
    };
    let sort_link = |key: DeviceSortKey, label: &str| {
        let desc = q.sort == key && !q.descending;
        let mark = if q.sort == key {
            if q.descending {
                " ↓"
            } else {
                " ↑"
            }
        } else {
            ""
        };
        let aria = if q.sort == key {
            if q.descending {
                "descending"
            } else {
                "ascending"
            }
        } else {
            "none"
        };
        let mut extra = vec![("sort", key.as_str().to_string())];
        if desc {
            extra.push(("order", "desc".into()));
        }
        html! { th scope="col" aria-sort=(aria) { a href=(with(&extra)) { (label) (mark) } } }
    };
    let at = |offset: i64| {
        let mut extra = vec![
            ("offset", offset.to_string()),
            ("sort", q.sort.as_str().to_string()),
        ];
        if q.descending {
            extra.push(("order", "desc".into()));
        }
        with(&extra)
    };
    let first = if page.total == 0 { 0 } else { page.offset + 1 };
    let last = page.offset + page.devices.len() as i64;
    let filters = html! {
        form.filters method="get" action="/console/devices" hx-get="/console/devices"
            hx-trigger="input delay:300ms, change" hx-target="#live" hx-select="#live"
            hx-swap="outerHTML" hx-push-url="true" role="search" aria-label="Filter devices" {
            label { "Search " input type="search" name="q" value=(q.text.clone().unwrap_or_default()) placeholder="name or id"; }
            label { "Label " input type="text" name="label" value=(q.labels.first().cloned().unwrap_or_default()) placeholder="site=plant1"; }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for st in DeviceState::ALL {
                        option value=(st.as_str()) selected[q.state == Some(*st)] { (st.as_str()) }
                    }
                }
            }
            label { "Problem "
                select name="problem" {
                    option value="" { "–" }
                    option value="any" selected[q.problem == Some(ProblemSelect::Any)] { "any problem" }
                    @for p in Problem::ALL {
                        option value=(p.as_str()) selected[q.problem == Some(ProblemSelect::Only(*p))] { (p.as_str().replace('_', " ")) }
                    }
                }
            }
            label { "Bundle " input type="text" name="bundle" value=(q.bundle.clone().unwrap_or_default()) placeholder="name or name#7"; }
            input type="hidden" name="sort" value=(q.sort.as_str());
            @if q.descending { input type="hidden" name="order" value="desc"; }
            noscript { button type="submit" { "Filter" } }
        }
    };
    let body = html! {
        (filters)
        (live(&uri, html! {
            p.summary { (first) "–" (last) " of " (fmt::count(page.total)) " devices" }
            (table_wrap("Devices", html! {
                table.devices {
                    thead { tr {
                        (sort_link(DeviceSortKey::Name, "Name"))
                        th scope="col" { "State" }
                        (sort_link(DeviceSortKey::Problems, "Problems"))
                        th scope="col" { "Models" }
                        th scope="col" { "Agent" }
                        (sort_link(DeviceSortKey::Backlog, "Backlog"))
                        (sort_link(DeviceSortKey::LastSeen, "Last seen"))
                        th scope="col" { "Labels" }
                    } }
                    tbody {
                        @for d in &page.devices {
                            tr {
                                td { a href={"/console/devices/" (d.id)} { (d.name) } br; span.muted.mono { (d.id) } }
                                td { (fmt::device_state(d.state)) }
                                td { @for p in &d.problems { (fmt::problem(*p)) " " } }
                                td.mono { (d.models.join(" ")) }
                                td { (d.agent_version.as_deref().unwrap_or("–")) }
                                td.num { (fmt::count(d.backlog)) }
                                td { (fmt::when(d.last_seen, now)) }
                                td { @for l in &d.labels { span.label { (l) } " " } }
                            }
                        }
                    }
                }
            }))
            nav.pager aria-label="Pages" {
                @if page.offset > 0 {
                    a href=(at((page.offset - page.limit).max(0))) rel="prev" { "← previous" }
                }
                @if last < page.total {
                    a href=(at(last)) rel="next" { "next →" }
                }
            }
        }))
    };
    layout::page(&s, Nav::Devices, title, body)
}
