//! `GET /` (any method): the host's readiness probe.

use warp::{Filter, Rejection, Reply};

/// Answers any request to `/` with 200.
pub fn route() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path::end().map(|| warp::reply::with_status("ok", warp::http::StatusCode::OK))
}
