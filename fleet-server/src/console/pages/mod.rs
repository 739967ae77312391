//! One module per console page. Each handler: the session (or a redirect to sign in), the
//! service calls as that user, the page.

pub mod admin;
pub mod alarms;
pub mod audit;
pub mod device;
pub mod devices;
pub mod drift;
pub mod login;
pub mod models;
pub mod overview;
pub mod rollouts;

use axum::http::Uri;

/// The page's query pairs (a malformed query string counts as none).
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// A URL of `path` with `pairs` (empty values left out).
pub fn href(path: &str, pairs: &[(String, String)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            format!(
                "{}={}",
                crate::drift::percent_encode(k),
                crate::drift::percent_encode(v)
            )
        })
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// The session or the response to return instead (a redirect to sign in).
macro_rules! session {
    ($c:expr, $headers:expr, $uri:expr) => {
        match $c.session(&$headers, &$uri).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

/// The value of a service call, or the error page.
macro_rules! or_error {
    ($e:expr, $s:expr, $nav:expr, $title:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $crate::console::layout::error_page(&$s, $nav, $title, &e),
        }
    };
}

pub(crate) use or_error;
pub(crate) use session;
