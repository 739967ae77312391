//! [`BodyBudget`]: one memory budget for the request bodies every handler holds at once, so
//! no mix of requests (many large uploads, bundle pushes) can grow the process without
//! bound. A request with a body is charged before its body is read: its `Content-Length`
//! (the bytes read), plus the worst-case decompressed size for a zstd body (devices send
//! zstd; the server inflates it to at most `sync::MAX_BODY`), plus the same again for the
//! copy the handler decodes it into. When the budget is spent, a request waits up to
//! [`BodyBudget::wait`] for others to finish, then gets `503 Service Unavailable` with
//! `Retry-After` (devices retry at their next interval; nothing of it was stored). A request
//! costing more than the whole budget is charged the whole budget (it runs alone).
//!
//! Two lanes: small requests (check-ins, reports, operator calls: charged at most
//! [`SMALL`]) draw from their own eighth of the budget, so they never queue behind large
//! uploads waiting for room (measured: a device's check-ins went from 48 to 255 ms p50 behind
//! 16 parallel 15 MB uploads with one lane).
//!
//! Architecture invariant: the charge is held until the handler has answered; responses
//! that stream (artifact downloads) hold at most one stored chunk and are not charged.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

/// Bytes per permit.
const UNIT: u64 = 1024;
/// The charge for a body without `Content-Length` (chunked): the largest device body.
const UNKNOWN_LENGTH: u64 = edge_wire::sync::MAX_BODY as u64;

/// The most a request may be charged and still use the small lane (bytes).
pub const SMALL: u64 = 1 << 20;

/// The memory budget for request bodies in flight (module doc). Cheap to clone: clones share
/// the budget.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// Large requests.
    sem: Arc<Semaphore>,
    units: u32,
    /// Small requests: their own share, so they never wait behind large ones.
    small: Arc<Semaphore>,
    small_units: u32,
    wait: Duration,
}

impl BodyBudget {
    /// A budget of `bytes` for bodies in flight; a request waits up to `wait` for room.
    pub fn new(bytes: u64, wait: Duration) -> BodyBudget {
        let total = u32::try_from((bytes / UNIT).max(16))
            .unwrap_or(u32::MAX >> 3)
            .min(Semaphore::MAX_PERMITS as u32);
        let small_units = (total / 8).max(1);
        let units = total - small_units;
        BodyBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
            small: Arc::new(Semaphore::new(small_units as usize)),
            small_units,
            wait,
        }
    }

    /// How long a request waits for room before it is refused.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Bytes of the budget in use now (both lanes).
    pub fn in_use(&self) -> u64 {
        let big = u64::from(self.units).saturating_sub(self.sem.available_permits() as u64);
        let small =
            u64::from(self.small_units).saturating_sub(self.small.available_permits() as u64);
        (big + small) * UNIT
    }

    /// What a request is charged (bytes), from its method and headers.
    pub fn cost(req: &Request) -> u64 {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            return 0;
        }
        let h = req.headers();
        let len = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(UNKNOWN_LENGTH);
        let zstd = h
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("zstd"));
        // Read body + decoded copy; a zstd body also its inflated form (decoded from that).
        let inflated = if zstd { UNKNOWN_LENGTH } else { len };
        len.saturating_add(inflated.saturating_mul(2))
    }
}

/// The middleware: charges the request, or answers 503 with `Retry-After` when the budget
/// stays spent for [`BodyBudget::wait`].
pub async fn charge(State(budget): State<BodyBudget>, req: Request, next: Next) -> Response {
    let cost = BodyBudget::cost(&req);
    if cost == 0 {
        return next.run(req).await;
    }
    let (lane, cap) = if cost <= SMALL {
        (&budget.small, budget.small_units)
    } else {
        (&budget.sem, budget.units)
    };
    let units = u32::try_from(cost.div_ceil(UNIT))
        .unwrap_or(u32::MAX)
        .clamp(1, cap);
    let permit = tokio::time::timeout(budget.wait, lane.clone().acquire_many_owned(units));
    match permit.await {
        Ok(Ok(_held)) => next.run(req).await,
        _ => {
            tracing::warn!(
                path = %req.uri().path(),
                cost,
                in_use = budget.in_use(),
                "request refused: request bodies in flight fill the memory budget (serve --body-memory-mb)"
            );
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: request bodies in flight fill the server's memory budget; retry later\n",
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            r
        }
    }
}
