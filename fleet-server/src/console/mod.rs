//! placeholder
pub fn router(_s: crate::service::FleetService) -> axum::Router {
    axum::Router::new()
}
