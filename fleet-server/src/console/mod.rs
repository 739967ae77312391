//! The operator console: server-rendered HTML pages under `/console/` (maud), made live by
//! htmx (each page's `#live` region re-fetches itself every 4 s, so what an operator sees is
//! at most ~5 s old) with uPlot charts; every asset is embedded ([`assets`]), nothing comes
//! from a CDN.
//!
//! Pages read through the service layer ([`crate::service::Acting`]) as the signed-in user;
//! every action (buttons and forms, `static/console.js`) calls the JSON operator API with
//! the session's CSRF token, so the console can do exactly what the API lets that user do.
//! Action controls are rendered only for roles that may use them.
//!
//! Security headers on every page: a Content-Security-Policy without inline scripts,
//! inline styles or eval; no framing; no referrer across origins.

mod assets;
mod fmt;
mod layout;
mod pages;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::operator::auth;
use crate::service::{FleetService, Session};

pub use layout::Nav;

/// Where the console lives.
pub const BASE: &str = "/console";
/// How often a page's live region refreshes itself.
pub const REFRESH_S: u32 = 4;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; font-src 'self'; object-src 'none'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'";

/// What the console's handlers share.
#[derive(Debug, Clone)]
pub struct Console {
    /// The service every page reads and acts through.
    pub service: FleetService,
}

/// The console's routes: `/console/…` pages, their assets, sign-in and sign-out. `/` and
/// `/console` redirect to the overview.
pub fn router(service: FleetService) -> Router {
    let c = Console { service };
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/console/assets/favicon.svg") }),
        )
        .route("/console/", get(pages::overview::page))
        .route(
            "/console/login",
            get(pages::login::form).post(pages::login::submit),
        )
        .route("/console/logout", post(pages::login::logout))
        .route("/console/devices", get(pages::devices::page))
        .route("/console/devices/{id}", get(pages::device::page))
        .route("/console/models", get(pages::models::page))
        .route("/console/rollouts", get(pages::rollouts::page))
        .route("/console/rollouts/{id}", get(pages::rollouts::detail))
        .route("/console/drift", get(pages::drift::page))
        .route("/console/drift/timeline", get(pages::drift::timeline))
        .route("/console/alarms", get(pages::alarms::page))
        .route("/console/audit", get(pages::audit::page))
        .route("/console/account", get(pages::admin::account))
        .route("/console/admin", get(pages::admin::page))
        .route("/console/assets/{name}", get(assets::serve))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(c)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

impl Console {
    /// The signed-in session, or a redirect to the sign-in page that comes back here.
    async fn session(&self, headers: &HeaderMap, uri: &Uri) -> Result<Session, Response> {
        match auth::session(&self.service, headers).await {
            Ok(s) => Ok(s),
            Err(_) => {
                let next = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/console/");
                let to = format!("/console/login?next={}", crate::drift::percent_encode(next));
                // htmx follows redirects inside the live region: make it reload the page.
                if headers.contains_key("hx-request") {
                    let mut r = StatusCode::OK.into_response();
                    if let Ok(v) = HeaderValue::from_str(&to) {
                        r.headers_mut().insert("hx-redirect", v);
                    }
                    return Err(r);
                }
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}
