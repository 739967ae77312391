//! Model and drift alarms from ingest, most recently changed first; acknowledge.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::html;

use super::{href, or_error, query_pairs, session};
use crate::console::layout::{self, action, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::views::AlarmListQuery;
use crate::store::now_ms;
use crate::types::{AlarmKind, Role};

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Alarms";
    let pairs = query_pairs(&uri);
    let q = or_error!(AlarmListQuery::from_pairs(&pairs), s, Nav::Alarms, title);
    let page = or_error!(a.alarms(&q).await, s, Nav::Alarms, title);
    let operator = s.principal.role >= Role::Operator;
    let now = now_ms();
    let mut base = q.to_pairs();
    base.retain(|(k, _)| k != "offset");
    let at = |offset: i64| {
        let mut p = base.clone();
        p.push(("offset".into(), offset.to_string()));
        href("/console/alarms", &p)
    };
    let last = page.offset + page.alarms.len() as i64;
    let body = html! {
        form.filters method="get" action="/console/alarms" aria-label="Filter alarms" {
            label { input type="checkbox" name="active" value="true" checked[q.active_only]; " raised only" }
            label { input type="checkbox" name="unacked" value="true" checked[q.unacked_only]; " not acknowledged" }
            label { "Kind "
                select name="kind" {
                    option value="" { "any" }
                    @for k in AlarmKind::ALL { option value=(k.as_str()) selected[q.kind == Some(*k)] { (k.as_str()) } }
                }
            }
            @if let Some(d) = &q.device { input type="hidden" name="device" value=(d); }
            button type="submit" { "Filter" }
        }
        (live(&uri, html! {
            p.summary { (page.total) " alarms" }
            (table_wrap("Alarms", html! { table {
                thead { tr {
                    th scope="col" { "Changed" } th scope="col" { "Device" } th scope="col" { "Model" }
                    th scope="col" { "Kind" } th scope="col" { "Subject" } th scope="col" { "Value" }
                    th scope="col" { "State" } th scope="col" { "Acknowledged" }
                } }
                tbody { @for al in &page.alarms { tr {
                    td { (fmt::when(Some(al.updated_at), now)) }
                    td { a href={"/console/devices/" (al.device_id)} { (if al.device_name.is_empty() { al.device_id.as_str() } else { al.device_name.as_str() }) } }
                    td { (al.model) " (" (al.bundle) " #" (al.version_number) ")" }
                    td { span class={"badge kind-" (al.kind.as_str())} { (al.kind.as_str()) } }
                    td { (al.subject) }
                    td.num { (al.metric) " " (fmt::score(al.score)) @if let Some(t) = al.threshold { " / " (format!("{t:.3}")) } }
                    td { @if al.active { span.badge.raised { "raised" } } @else { "cleared" }
                        @if let Some(r) = al.raised_ns { br; span.muted { (fmt::ns(r)) } } }
                    td {
                        @if let Some(by) = &al.acked_by { (by) " " (fmt::when(al.acked_at, now)) }
                        @else if operator { (action("POST", &format!("/v1/operator/alarms/{}/ack", al.id), "Acknowledge", None, "")) }
                        @else { "–" }
                    }
                } } }
            } }))
            nav.pager aria-label="Pages" {
                @if page.offset > 0 { a href=(at((page.offset - page.limit).max(0))) rel="prev" { "← newer" } }
                @if last < page.total { a href=(at(last)) rel="next" { "older →" } }
            }
        }))
    };
    layout::page(&s, Nav::Alarms, title, body)
}
