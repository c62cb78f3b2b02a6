//! What a request asks to do, as an authorizer sees it (kube-apiserver's
//! `RequestInfo`): verb, group, resource, subresource, namespace and name
//! for a resource path; verb and path for any other.

use std::borrow::Cow;

/// A request's attributes (borrowed from the request where they can be: a
/// check on the request path allocates nothing for them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection` (or a special verb such as `bind`, `escalate`).
    pub verb: Cow<'a, str>,
    /// Whether the path names a resource (else `path` is what is asked).
    pub resource_request: bool,
    /// The API group (`""`: core).
    pub api_group: Cow<'a, str>,
    /// The resource (plural).
    pub resource: Cow<'a, str>,
    /// The subresource (`status`, `scale`, `log`, …) or `""`.
    pub subresource: Cow<'a, str>,
    /// The namespace (`""`: cluster scope).
    pub namespace: Cow<'a, str>,
    /// The object's name (`""` for collections).
    pub name: Cow<'a, str>,
    /// The path of a non-resource request.
    pub path: Cow<'a, str>,
}

/// Subresources of a namespace (its own, not a resource inside it).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

impl<'a> Attributes<'a> {
    /// The attributes of `method` on `path` (relative to the VC) with
    /// `query` (its raw query string).
    pub fn of_request(method: &'a str, path: &'a str, query: &str) -> Attributes<'a> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut out = Attributes {
            path: path.into(),
            verb: method.to_ascii_lowercase().into(),
            ..Attributes::default()
        };
        let rest: &[&str] = match parts.as_slice() {
            ["api", version, rest @ ..] if !rest.is_empty() && !version.is_empty() => rest,
            ["apis", group, version, rest @ ..] if !rest.is_empty() && !version.is_empty() => {
                out.api_group = (*group).into();
                rest
            }
            _ => return out,
        };
        out.resource_request = true;
        let watch_path = rest[0] == "watch" && rest.len() > 1;
        let rest = if watch_path { &rest[1..] } else { rest };
        out.verb = match method {
            _ if watch_path => "watch",
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .into();
        let rest = match rest {
            ["namespaces", ns, inner @ ..] => {
                out.namespace = (*ns).into();
                match inner.first() {
                    Some(first) if !NAMESPACE_SUBRESOURCES.contains(first) => inner,
                    _ => rest,
                }
            }
            _ => rest,
        };
        if let Some(resource) = rest.first() {
            out.resource = (*resource).into();
        }
        if let Some(name) = rest.get(1) {
            out.name = (*name).into();
        }
        if let Some(sub) = rest.get(2) {
            out.subresource = (*sub).into();
        }
        if out.name.is_empty() && out.verb == "get" {
            let params: Vec<(String, String)> = form_params(query);
            // The first value counts, as the server reads it.
            let watching = params
                .iter()
                .find(|(k, _)| k == "watch")
                .is_some_and(|(_, v)| matches!(v.as_str(), "true" | "1"));
            out.verb = if watching { "watch" } else { "list" }.into();
            // A list or watch of one object by name (`metadata.name=x`, as
            // informers of one object ask) is asked of that name.
            if let Some((_, selector)) = params.iter().find(|(k, _)| k == "fieldSelector") {
                if let Some(name) = selector
                    .strip_prefix("metadata.name=")
                    .filter(|n| !n.is_empty() && !n.contains([',', '=', '!', '/']))
                {
                    out.name = name.to_owned().into();
                }
            }
        }
        if out.name.is_empty() && out.verb == "delete" {
            out.verb = "deletecollection".into();
        }
        out
    }
}

/// The decoded pairs of a query string.
fn form_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding (and `+` as space) of one query component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of<'a>(method: &'a str, path: &'a str, query: &str) -> Attributes<'a> {
        Attributes::of_request(method, path, query)
    }

    #[test]
    fn resource_paths_are_read_as_kube_apiserver_reads_them() {
        let a = of("GET", "/api/v1/namespaces/default/pods", "");
        assert_eq!(
            (&*a.verb, &*a.resource, &*a.namespace, &*a.name),
            ("list", "pods", "default", "")
        );
        assert!(a.resource_request);
        let a = of(
            "GET",
            "/api/v1/namespaces/default/pods",
            "watch=true&resourceVersion=5",
        );
        assert_eq!(a.verb, "watch");
        let a = of("GET", "/api/v1/watch/namespaces/default/pods", "");
        assert_eq!((&*a.verb, &*a.resource), ("watch", "pods"));
        let a = of(
            "GET",
            "/apis/apps/v1/namespaces/x/deployments/web/scale",
            "",
        );
        assert_eq!(
            (
                &*a.verb,
                &*a.api_group,
                &*a.resource,
                &*a.name,
                &*a.subresource
            ),
            ("get", "apps", "deployments", "web", "scale")
        );
        let a = of("DELETE", "/api/v1/namespaces/x/configmaps", "");
        assert_eq!(a.verb, "deletecollection");
        let a = of("PATCH", "/api/v1/nodes/n1/status", "");
        assert_eq!(
            (&*a.verb, &*a.resource, &*a.namespace, &*a.subresource),
            ("patch", "nodes", "", "status")
        );
        // A namespace is its own namespace; its status is its subresource.
        let a = of("GET", "/api/v1/namespaces/team", "");
        assert_eq!(
            (&*a.verb, &*a.resource, &*a.namespace, &*a.name),
            ("get", "namespaces", "team", "team")
        );
        let a = of("PUT", "/api/v1/namespaces/team/finalize", "");
        assert_eq!((&*a.resource, &*a.subresource), ("namespaces", "finalize"));
        let a = of("GET", "/api/v1/namespaces", "");
        assert_eq!((&*a.verb, &*a.namespace), ("list", ""));
        let a = of(
            "GET",
            "/api/v1/namespaces/d/secrets",
            "fieldSelector=metadata.name%3Dtoken&watch=1",
        );
        assert_eq!((&*a.verb, &*a.name), ("watch", "token"));
        let a = of(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "",
        );
        assert_eq!(
            (&*a.verb, &*a.api_group),
            ("create", "authorization.k8s.io")
        );
    }

    #[test]
    fn other_paths_are_non_resource_requests() {
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v3",
        ] {
            let a = of("GET", path, "");
            assert!(!a.resource_request, "{path}");
            assert_eq!((&*a.verb, &*a.path), ("get", path));
        }
    }
}
