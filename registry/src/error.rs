//! Kubernetes `Status` errors: what every layer below HTTP fails with. The
//! apiserver turns one into a response in exactly one function.

use http::StatusCode;
use serde_json::json;

/// A failure as Kubernetes reports it: an HTTP code, a `reason`, a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// Kubernetes `reason` (`NotFound`, `Unauthorized`, …).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The `Status`'s `details`, where kube-apiserver sends them and clients
    /// read them: a 422's object and causes (kubectl prints its
    /// "The <Kind> \"<name>\" is invalid: <field>: …" from them).
    pub details: Option<Box<serde_json::Value>>,
}

impl ApiError {
    /// 401: no credential the server accepts.
    pub fn unauthorized() -> ApiError {
        ApiError {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }

    /// 403 with a message naming what was refused.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: message.into(),
            details: None,
        }
    }

    /// 404 for a path this server does not serve.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: message.into(),
            details: None,
        }
    }

    /// 503: a dependency (storage) is not answering.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::SERVICE_UNAVAILABLE,
            reason: "ServiceUnavailable",
            message: message.into(),
            details: None,
        }
    }

    /// 404 for a named object, with `details` as kube-apiserver sends them.
    pub fn not_found_object(kind: &str, group: &str, name: &str) -> ApiError {
        let plural = format!("{}s", kind.to_lowercase());
        let resource = if group.is_empty() {
            plural
        } else {
            format!("{plural}.{group}")
        };
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{resource} \"{name}\" not found"),
            details: None,
        }
    }

    /// 409: the object already exists (`resource` as `plural[.group]`).
    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{resource} \"{name}\" already exists"),
            details: None,
        }
    }

    /// 409: the object changed since the caller read it.
    pub fn conflict(resource: &str, name: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
            details: None,
        }
    }

    /// 422: the object's name is invalid (`kind` as `Kind[.group]`).
    pub fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
        ApiError::field(
            kind,
            name,
            field,
            &format!("Invalid value: \"{name}\": {detail}"),
        )
    }

    /// 422 for one field, as kube-apiserver words a field error: the message
    /// `<Kind[.group]> "<name>" is invalid: <field>: <detail>`, where
    /// `detail` starts with the error's type (`Invalid value: …`,
    /// `Required value`, `Forbidden: …`), and `details` naming the object
    /// and the field.
    pub fn field(kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
        ApiError::fields(kind, name, &[(field.to_owned(), detail.to_owned())])
    }

    /// 422 for several fields at once (each `(field, detail)` as in
    /// [`ApiError::field`]); kube-apiserver lists them in brackets:
    /// `<Kind> "<name>" is invalid: [<field>: <detail>, …]`.
    pub fn fields(kind: &str, name: &str, errors: &[(String, String)]) -> ApiError {
        let (bare_kind, group) = kind.split_once('.').unwrap_or((kind, ""));
        let causes: Vec<serde_json::Value> = errors
            .iter()
            .map(|(field, detail)| {
                json!({"reason": cause_type(detail), "message": detail, "field": field})
            })
            .collect();
        let listed: Vec<String> = errors.iter().map(|(f, d)| format!("{f}: {d}")).collect();
        let message = match listed.as_slice() {
            [one] => format!("{kind} \"{name}\" is invalid: {one}"),
            many => format!("{kind} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message,
            details: Some(Box::new(json!({
                "name": name,
                "group": group,
                "kind": bare_kind,
                "causes": causes,
            }))),
        }
    }

    /// 504 for a resourceVersion the server has not reached, as kube-apiserver
    /// answers it: a Timeout whose cause `ResourceVersionTooLarge` tells
    /// client-go's reflector to relist, and `Retry-After: 1`.
    pub fn too_large_resource_version(
        requested: impl std::fmt::Display,
        current: Option<u64>,
    ) -> ApiError {
        let current = current
            .map(|c| format!(", current: {c}"))
            .unwrap_or_default();
        ApiError {
            code: StatusCode::GATEWAY_TIMEOUT,
            reason: "Timeout",
            message: format!("Timeout: Too large resource version: {requested}{current}"),
            details: Some(Box::new(json!({
                "causes": [{
                    "reason": "ResourceVersionTooLarge",
                    "message": "Too large resource version",
                }],
                "retryAfterSeconds": 1,
            }))),
        }
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 500: something on our side failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// The `Status` object kube-apiserver sends for this error.
    pub fn to_status(&self) -> serde_json::Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            body["details"] = (**details).clone();
        }
        body
    }

    /// Seconds the client should wait before retrying (`Retry-After`), if
    /// the error says.
    pub fn retry_after(&self) -> Option<u64> {
        self.details
            .as_ref()
            .and_then(|d| d["retryAfterSeconds"].as_u64())
    }
}

/// The `reason` of a field error's cause, from the type its detail starts
/// with.
fn cause_type(detail: &str) -> &'static str {
    [
        ("Invalid value", "FieldValueInvalid"),
        ("Required value", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Unsupported value", "FieldValueNotSupported"),
        ("Duplicate value", "FieldValueDuplicate"),
        ("Too long", "FieldValueTooLong"),
        ("Too many", "FieldValueTooMany"),
        ("Not found", "FieldValueNotFound"),
    ]
    .iter()
    .find(|(prefix, _)| detail.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, t)| t)
}

/// A value's JSON text. (`Value`'s `Display` writes the same bytes through the
/// formatting machinery, measurably slower on every response.)
pub fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a Value always serializes")
}

/// The one mapping from storage errors to Kubernetes `Status`.
pub fn from_store(e: kplex_storage::StoreError) -> ApiError {
    use kplex_storage::StoreError as E;
    let (code, reason) = match &e {
        E::InvalidKey { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
        E::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
        E::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
        E::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
        E::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
        E::Compacted { .. } => (StatusCode::GONE, "Expired"),
        E::FutureRevision { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        E::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        E::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "Forbidden"),
        E::Unavailable(_) | E::Closed => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    ApiError {
        code,
        reason,
        message: e.to_string(),
        details: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_names_its_object_and_cause_as_kube_apiserver_does() {
        let e = ApiError::field(
            "Deployment.apps",
            "web",
            "spec.selector",
            "Invalid value: {}: field is immutable",
        );
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.message,
            "Deployment.apps \"web\" is invalid: spec.selector: Invalid value: {}: field is immutable"
        );
        assert_eq!(
            *e.details.unwrap(),
            json!({
                "name": "web",
                "group": "apps",
                "kind": "Deployment",
                "causes": [{
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: {}: field is immutable",
                    "field": "spec.selector",
                }],
            })
        );
        let core = ApiError::field("Pod", "p", "spec.containers", "Required value");
        let details = core.details.unwrap();
        assert_eq!(
            (details["kind"].as_str(), details["group"].as_str()),
            (Some("Pod"), Some(""))
        );
        assert_eq!(details["causes"][0]["reason"], "FieldValueRequired");
    }

    #[test]
    fn a_too_large_resource_version_says_when_to_retry() {
        let e = ApiError::too_large_resource_version(9, Some(4));
        assert_eq!(
            e.message,
            "Timeout: Too large resource version: 9, current: 4"
        );
        assert_eq!(e.code, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.retry_after(), Some(1));
        assert_eq!(e.to_status()["details"]["retryAfterSeconds"], 1);
        assert_eq!(ApiError::conflict("configmaps", "x").retry_after(), None);
    }
}
