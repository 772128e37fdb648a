//! The HTTP edge of an in-cluster plugsync: serves build contexts to build Jobs by sha256.
//!
//! A build Job's init container downloads `GET /contexts/<sha256>` and checks the digest itself
//! (`sha256sum -c`), so this endpoint needs no authentication to be safe against tampering:
//! it only ever serves content-addressed bytes, verified again on read from the cache.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::resolve::cache::Cache;

/// The routes: `/contexts/{sha256}` and `/healthz`.
pub fn router(cache: Cache) -> Router {
    Router::new()
        .route("/contexts/{sha256}", get(context))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(cache)
}

async fn context(State(cache): State<Cache>, Path(sha256): Path<String>) -> Response {
    if !crate::package::is_sha256_hex(&sha256) {
        return (
            StatusCode::BAD_REQUEST,
            "a build context is named by 64 lowercase hex characters\n",
        )
            .into_response();
    }
    match tokio::task::spawn_blocking(move || cache.get(&sha256)).await {
        Ok(Ok(Some(bytes))) => {
            ([(header::CONTENT_TYPE, "application/x-tar")], bytes).into_response()
        }
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such build context\n").into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the build context\n",
        )
            .into_response(),
    }
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    cache: Cache,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(cache))
        .with_graceful_shutdown(shutdown)
        .await
}
