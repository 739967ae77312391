//! The page frame: head (assets, CSRF token, htmx settings), navigation for the user's role,
//! the live region that refreshes itself, messages, and error pages.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::assets::url;
use super::REFRESH_S;
use crate::service::{ServiceError, Session};
use crate::types::Role;

/// The navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The overview page.
    Overview,
    /// The device list and device pages.
    Devices,
    /// The model registry pages.
    Models,
    /// The rollout pages.
    Rollouts,
    /// The drift pages.
    Drift,
    /// The alarm list.
    Alarms,
    /// The audit log.
    Audit,
    /// Users and tokens (admins).
    Admin,
    /// The signed-in user's own account page.
    Account,
    /// No entry highlighted.
    None,
}

const ENTRIES: &[(Nav, &str, &str, Role)] = &[
    (Nav::Overview, "/console/", "Overview", Role::Viewer),
    (Nav::Devices, "/console/devices", "Devices", Role::Viewer),
    (Nav::Models, "/console/models", "Models", Role::Viewer),
    (Nav::Rollouts, "/console/rollouts", "Rollouts", Role::Viewer),
    (Nav::Drift, "/console/drift", "Drift", Role::Viewer),
    (Nav::Alarms, "/console/alarms", "Alarms", Role::Viewer),
    (Nav::Audit, "/console/audit", "Audit", Role::Viewer),
    (Nav::Admin, "/console/admin", "Users & tokens", Role::Admin),
];

/// htmx settings: no eval, no script tags from swaps, no injected styles (the CSP forbids them).
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false,"historyCacheSize":0,"defaultSwapStyle":"outerHTML"}"#;

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · fleet console" }
            meta name="htmx-config" content=(HTMX_CONFIG);
            @if let Some(c) = csrf {
                meta name="csrf-token" content=(c);
            }
            link rel="icon" type="image/svg+xml" href=(url("favicon.svg"));
            link rel="stylesheet" href=(url("uPlot.min.css"));
            link rel="stylesheet" href=(url("console.css"));
            script src=(url("htmx.min.js")) defer {}
            script src=(url("uPlot.iife.min.js")) defer {}
            script src=(url("console.js")) defer {}
        }
    }
}

/// A whole page for a signed-in user.
pub fn page(s: &Session, nav: Nav, title: &str, body: Markup) -> Response {
    let p = &s.principal;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&s.csrf)))
            body data-role=(p.role.as_str()) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/" { "fleet console" }
                    nav aria-label="Main" {
                        ul {
                            @for (n, href, label, role) in ENTRIES {
                                @if p.role >= *role {
                                    li {
                                        @if *n == nav {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        a href="/console/account" title="Your account and API tokens" {
                            (p.name) " · " span.role { (p.role.as_str()) }
                        }
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    div #flash role="status" aria-live="polite" {}
                    (body)
                }
                footer.bottom {
                    span { "fleet-server " (crate::VERSION) }
                    " · " a href=(url("licenses.txt")) { "third-party licences" }
                }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

/// A page without a session (sign-in).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, None))
            body {
                main #main.narrow {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    html_response(status, markup)
}

pub fn html_response(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        m.into_string(),
    )
        .into_response()
}

/// The region of a page that re-fetches itself (this page's URL, its `#live` part) every
/// few seconds and after every action.
pub fn live(uri: &Uri, body: Markup) -> Markup {
    let here = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/console/");
    html! {
        div #live hx-get=(here) hx-trigger={"every " (REFRESH_S) "s, refresh from:body"}
            hx-select="#live" hx-swap="outerHTML" {
            (body)
        }
    }
}

/// A page showing a failed operation (its status, its message).
pub fn error_page(s: &Session, nav: Nav, title: &str, e: &ServiceError) -> Response {
    let status = crate::operator::status_of(e.kind());
    let mut r = page(
        s,
        nav,
        title,
        html! { p.error role="alert" { (e.to_string()) } },
    );
    *r.status_mut() = status;
    r
}

/// A chart (drawn by console.js with uPlot): its data as JSON in an attribute, which
/// survives the live region's refreshes (htmx drops `<script>` elements it swaps in).
pub fn chart(name: &str, title: &str, json: &str) -> Markup {
    html! { div.chart data-chart=(name) data-title=(title) data-json=(json) {} }
}

/// A table in a wrapper that scrolls sideways on narrow screens (and can take focus, so a
/// keyboard can scroll it).
pub fn table_wrap(label: &str, t: Markup) -> Markup {
    html! { div.table-wrap tabindex="0" role="region" aria-label={(label) " (table)"} { (t) } }
}

/// An action button calling the operator API (console.js), behind a confirmation when
/// `confirm` is set.
pub fn action(method: &str, url: &str, label: &str, confirm: Option<&str>, class: &str) -> Markup {
    action_body(method, url, label, confirm, class, None)
}

/// [`action`] sending a JSON body.
pub fn action_body(
    method: &str,
    url: &str,
    label: &str,
    confirm: Option<&str>,
    class: &str,
    body: Option<&str>,
) -> Markup {
    html! {
        button type="button" class={"act " (class)} data-method=(method) data-url=(url)
            data-confirm=[confirm] data-body=[body] { (label) }
    }
}
