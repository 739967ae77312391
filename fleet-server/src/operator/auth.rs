//! Who is calling: an API token (`Authorization: Bearer …`) or the console's session
//! cookie; the CSRF check for state changes made with the cookie; the cookie itself.

use axum::http::{header, HeaderMap, HeaderValue, Method};

use crate::service::{FleetService, Principal, ServiceError, Session, SESSION_COOKIE};

/// The header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Equal in time independent of where the bytes differ (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a session: HttpOnly, Secure, SameSite=Strict, the whole site.
pub fn session_cookie(id: &str, max_age_s: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        max_age_s.max(0)
    ))
    .ok()
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static("fleet_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// Whether a browser request comes from a page of this server: `Origin` (when sent) names
/// the `Host` it was sent to, and `Sec-Fetch-Site` (when sent) is not cross-site.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_ok = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .is_some_and(|h| h.eq_ignore_ascii_case(host)),
    };
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s != "cross-site");
    origin_ok && site_ok
}

/// The console session of a request, if it carries a valid one.
pub async fn session(svc: &FleetService, headers: &HeaderMap) -> Result<Session, ServiceError> {
    let Some(c) = cookie(headers, SESSION_COOKIE).filter(|c| !c.is_empty()) else {
        return Err(ServiceError::Unauthorized(
            crate::service::AuthError::Missing.to_string(),
        ));
    };
    svc.session(c)
        .await
        .map_err(|e| ServiceError::Unauthorized(e.to_string()))
}

/// The CSRF check of a state change made with `s`: the header must carry its token and the
/// request must come from this server's pages.
pub fn check_csrf(s: &Session, headers: &HeaderMap) -> Result<(), ServiceError> {
    let sent = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if sent.is_empty() || !ct_eq(sent, s.csrf.as_bytes()) {
        return Err(ServiceError::Forbidden(
            "missing or wrong CSRF token (X-CSRF-Token): reload the page".into(),
        ));
    }
    if !same_origin(headers) {
        return Err(ServiceError::Forbidden("cross-site request refused".into()));
    }
    Ok(())
}

/// Who is calling: a bearer token, else the session cookie (with the CSRF check for
/// state changes). A device client certificate is never looked at.
pub async fn authenticate(
    svc: &FleetService,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Principal, ServiceError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let token = v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ServiceError::Unauthorized("Authorization must be `Bearer <API token>`".into())
            })?;
        return svc
            .token_principal(token)
            .await
            .map_err(|e| ServiceError::Unauthorized(e.to_string()));
    }
    let s = session(svc, headers).await?;
    if super::is_unsafe(method) {
        check_csrf(&s, headers)?;
    }
    Ok(s.principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_origins_and_constant_time_compare() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; fleet_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "fleet_session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        h.insert(header::HOST, HeaderValue::from_static("fleet:8443"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://fleet:8443"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        let c = session_cookie("xyz", 60).unwrap();
        let c = c.to_str().unwrap();
        for attr in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Max-Age=60",
            "Path=/",
        ] {
            assert!(c.contains(attr), "{c}");
        }
    }
}
