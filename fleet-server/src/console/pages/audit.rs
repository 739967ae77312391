//! The audit log: every state change, by whom, newest first.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::html;

use super::{href, or_error, query_pairs, session};
use crate::console::layout::{self, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::views::AuditListQuery;

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Audit log";
    let pairs = query_pairs(&uri);
    let q = or_error!(AuditListQuery::from_pairs(&pairs), s, Nav::Audit, title);
    let entries = or_error!(a.audit_log(&q).await, s, Nav::Audit, title);
    let older = entries.last().map(|e| {
        let mut p = q.to_pairs();
        p.retain(|(k, _)| k != "before");
        p.push(("before".into(), e.at.to_string()));
        href("/console/audit", &p)
    });
    let body = html! {
        form.filters method="get" action="/console/audit" aria-label="Filter the audit log" {
            label { "Actor " input type="text" name="actor" value=(q.actor.clone().unwrap_or_default()); }
            label { "Action starts with " input type="text" name="action" value=(q.action.clone().unwrap_or_default()) placeholder="rollout."; }
            button type="submit" { "Filter" }
        }
        (live(&uri, html! {
            (table_wrap("Audit log", html! { table {
                thead { tr { th scope="col" { "When (UTC)" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Subject" } th scope="col" { "Detail" } } }
                tbody { @for e in &entries { tr {
                    td.nowrap { (fmt::utc(e.at)) } td { (e.actor) } td.mono { (e.action) }
                    td.wrap { (e.subject) } td.wrap { (e.detail) }
                } } }
            } }))
            @if let Some(o) = &older { @if entries.len() as i64 >= q.limit { nav.pager aria-label="Pages" { a href=(o) rel="next" { "older →" } } } }
        }))
    };
    layout::page(&s, Nav::Audit, title, body)
}
