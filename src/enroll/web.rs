//! The public enrollment routes, served beside the Square webhook receiver (same connection
//! cap, header and request timeouts): `GET /enroll/{token}` (the page), `GET /enroll/callback`
//! (where Point of Sale returns on the device) and `POST /enroll/{token}/check` (the page's
//! "check again").
//!
//! Invariants: a token that is not 64 hex characters is refused before any query; every answer
//! is `no-store`, unframeable, sends no referrer and runs no script; a failure shows a page that
//! says to reload, never an error text.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::Counter;
use super::page::{self, PageModel};
use crate::domain::pos;

/// The enrollment routes over `counter`.
pub fn router(counter: Counter) -> Router {
    Router::new()
        .route("/enroll/callback", get(callback))
        .route("/enroll/{token}", get(show))
        .route("/enroll/{token}/check", post(check))
        .with_state(counter)
}

fn well_formed(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    resp
}

fn unknown(c: &Counter) -> Response {
    html(
        StatusCode::NOT_FOUND,
        page::message(
            &c.config().business_name,
            "Link not found",
            "This enrollment link is unknown or was replaced by a newer one. Ask for a new link.",
        ),
    )
}

fn unavailable(c: &Counter) -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        page::message(
            &c.config().business_name,
            "Try again",
            "The enrollment could not be read just now. Reload this page in a moment.",
        ),
    )
}

async fn show(State(c): State<Counter>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    if !well_formed(&token) {
        return unknown(&c);
    }
    let view = match c.open(&token).await {
        Ok(Some(v)) => v,
        Ok(None) => return unknown(&c),
        Err(e) => {
            tracing::warn!(error = %e, "enrollment page: not available");
            return unavailable(&c);
        }
    };
    let cfg = c.config();
    let (Some(launch), Some(link)) = (c.launch(&view, &token), cfg.link(&token)) else {
        return unavailable(&c);
    };
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let second_period = c.second_period_start(&view).ok();
    let model = PageModel {
        business: &cfg.business_name,
        view: &view,
        token: &token,
        now: chrono::Utc::now(),
        platform: pos::platform(agent),
        ios_url: pos::ios_url(&launch),
        android_url: pos::android_url(&launch, &link),
        second_period,
    };
    html(StatusCode::OK, page::render(&model))
}

async fn callback(
    State(c): State<Counter>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match c.callback(&query).await {
        Ok(called) => match (called.token, called.message) {
            (Some(token), _) if well_formed(&token) => {
                Redirect::to(&format!("/enroll/{token}")).into_response()
            }
            (_, message) => html(
                StatusCode::BAD_REQUEST,
                page::message(
                    &c.config().business_name,
                    "Not an enrollment",
                    message
                        .as_deref()
                        .unwrap_or("This answer does not name an enrollment."),
                ),
            ),
        },
        Err(e) => {
            tracing::warn!(error = %e, "enrollment callback: not handled; the page checks again");
            unavailable(&c)
        }
    }
}

async fn check(State(c): State<Counter>, Path(token): Path<String>) -> Response {
    if !well_formed(&token) {
        return unknown(&c);
    }
    match crate::store::enrollments::by_token(c.pool(), &token).await {
        Ok(Some(view)) => {
            if let Err(e) = c.ask(&view).await {
                tracing::warn!(error = %e, "enrollment check: Square could not be asked");
            }
            Redirect::to(&format!("/enroll/{token}")).into_response()
        }
        Ok(None) => unknown(&c),
        Err(_) => unavailable(&c),
    }
}
