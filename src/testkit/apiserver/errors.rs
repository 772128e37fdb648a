//! `metav1.Status` errors, worded like the real kube-apiserver's.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// A failed request: HTTP code plus the `metav1.Status` body sent back.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code (also `code` in the body).
    pub code: u16,
    /// The `metav1.Status` object.
    pub status: Value,
}

/// What an error is about, for `details` and messages: `deployments.apps "x"`.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// API group ("" for core).
    pub group: String,
    /// Plural resource name, e.g. `deployments`.
    pub resource: String,
    /// Kind, e.g. `Deployment` (used by `Invalid`).
    pub kind: String,
    /// Object name.
    pub name: String,
}

impl Subject {
    /// `deployments.apps` or `configmaps`.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `Deployment.apps` or `ConfigMap`.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    fn details(&self) -> Value {
        let mut d = serde_json::Map::new();
        if !self.name.is_empty() {
            d.insert("name".into(), json!(self.name));
        }
        if !self.group.is_empty() {
            d.insert("group".into(), json!(self.group));
        }
        if !self.resource.is_empty() {
            d.insert("kind".into(), json!(self.resource));
        }
        Value::Object(d)
    }
}

/// The canonical `reason` for an HTTP code.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

impl ApiError {
    /// A Status with the given code, reason, message and details.
    pub fn new(
        code: u16,
        reason: &str,
        message: impl Into<String>,
        details: Option<Value>,
    ) -> Self {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code,
        });
        if let Some(d) = details {
            if d.as_object().is_some_and(|m| !m.is_empty()) {
                status["details"] = d;
            }
        }
        ApiError { code, status }
    }

    /// A Status for an arbitrary code with its canonical reason (used by fault injection).
    pub fn from_code(code: u16, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(code, reason_for(code), message, None);
        if code == 429 {
            e.status["details"] = json!({"retryAfterSeconds": 1});
        }
        e
    }

    /// 404 `deployments.apps "x" not found`.
    pub fn not_found(s: &Subject) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", s.qualified_resource(), s.name),
            Some(s.details()),
        )
    }

    /// 404 for an unknown path.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None,
        )
    }

    /// 409 `deployments.apps "x" already exists`.
    pub fn already_exists(s: &Subject) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", s.qualified_resource(), s.name),
            Some(s.details()),
        )
    }

    /// 409 optimistic-concurrency conflict.
    pub fn conflict(s: &Subject, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                s.qualified_resource(),
                s.name,
                why
            ),
            Some(s.details()),
        )
    }

    /// 409 for a stale `metadata.resourceVersion`.
    pub fn stale(s: &Subject) -> Self {
        ApiError::conflict(
            s,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message, None)
    }

    /// 403 Forbidden.
    pub fn forbidden(s: &Subject, message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message, Some(s.details()))
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"),
            None,
        )
    }

    /// 422 Invalid: `Deployment.apps "x" is invalid: field: detail`.
    pub fn invalid(s: &Subject, field: &str, cause_reason: &str, detail: &str) -> Self {
        let mut details = s.details();
        details["kind"] = json!(s.kind);
        details["causes"] = json!([{ "reason": cause_reason, "message": detail, "field": field }]);
        ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{}\" is invalid: {}: {}",
                s.qualified_kind(),
                s.name,
                field,
                detail
            ),
            Some(details),
        )
    }

    /// 410 Expired: the watch window has moved past the requested resourceVersion.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
            None,
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message, None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status).unwrap_or_default();
        let mut resp = (code, body).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        if self.code == 429 {
            h.insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}
