//! Sign-in and sign-out. The sign-in form posts here (works without JavaScript); the
//! session cookie is HttpOnly, Secure, SameSite=Strict.

use axum::extract::{Extension, Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::query_pairs;
use crate::console::layout;
use crate::console::Console;
use crate::operator::auth;
use crate::service::ServiceError;
use crate::tls::PeerAddr;

/// Only pages of the console are places to return to.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/console/".to_string(),
    }
}

fn form_page(status: StatusCode, next: &str, user: &str, error: Option<&str>) -> Response {
    layout::bare(
        status,
        "Sign in",
        html! {
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            form.signin method="post" action="/console/login" {
                input type="hidden" name="next" value=(next);
                label for="user" { "User name" }
                input #user type="text" name="user" autocomplete="username" required
                    value=(user) autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub async fn form(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let pairs = query_pairs(&uri);
    let next = safe_next(
        pairs
            .iter()
            .find(|(k, _)| k == "next")
            .map(|(_, v)| v.as_str()),
    );
    if auth::session(&c.service, &headers).await.is_ok() {
        return Redirect::to(&next).into_response();
    }
    form_page(StatusCode::OK, &next, "", None)
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

pub async fn submit(
    State(c): State<Console>,
    addr: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    if !auth::same_origin(&headers) {
        return form_page(
            StatusCode::FORBIDDEN,
            &next,
            "",
            Some("cross-site sign-in refused"),
        );
    }
    let client = addr.map_or_else(|| "unknown".to_string(), |a| a.0 .0.ip().to_string());
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match c.service.login(&f.user, &f.password, &client, ua).await {
        Ok((reply, id)) => {
            let mut r = Redirect::to(&next).into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            let ttl = (reply.expires_at - crate::store::now_ms()) / 1000;
            if let Some(c) = auth::session_cookie(&id, ttl) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        Err(e) => {
            let status = crate::operator::status_of(e.kind());
            let mut r = form_page(status, &next, &f.user, Some(&e.to_string()));
            if let ServiceError::Throttled { retry_after_s, .. } = e {
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            r
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(f): Form<SignOut>,
) -> Response {
    let mut r = Redirect::to("/console/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(s) = auth::session(&c.service, &headers).await {
        if !auth::ct_eq(f.csrf.as_bytes(), s.csrf.as_bytes()) || !auth::same_origin(&headers) {
            return layout::bare(
                StatusCode::FORBIDDEN,
                "Sign out",
                html! { p.error role="alert" { "missing or wrong CSRF token: reload the page" } },
            );
        }
        if let Err(e) = c.service.logout(&s).await {
            tracing::error!("sign-out: {e}");
        }
    }
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::clear_session_cookie());
    r
}
