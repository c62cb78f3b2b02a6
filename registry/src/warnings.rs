//! Warnings for the client (`Warning: 299 - "…"` response headers, which
//! kubectl prints as `Warning: …`). Code anywhere below the handler adds to
//! the current request's list; the handler turns it into headers.

use std::cell::RefCell;
use std::future::Future;

use http::header::{HeaderValue, WARNING};
use http::Response;

tokio::task_local! {
    static WARNINGS: RefCell<Vec<String>>;
}

/// Longest warning kept (as kube-apiserver: longer ones are cut).
const LONGEST: usize = 4 * 1024;

/// Most bytes of warnings one response carries (as kube-apiserver: later
/// ones are dropped), so a request cannot make its own headers too large
/// for clients.
const MOST_BYTES: usize = 256 * 1024;

/// Most warnings one response carries.
const MOST_WARNINGS: usize = 1000;

/// Adds a warning to the response of the request being served (nothing
/// outside a request).
pub fn add(message: impl Into<String>) {
    let mut message = message.into();
    if message.len() > LONGEST {
        let mut end = LONGEST;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let _ = WARNINGS.try_with(|w| {
        let mut w = w.borrow_mut();
        if w.len() >= MOST_WARNINGS {
            return;
        }
        let used: usize = w.iter().map(String::len).sum();
        if used + message.len() <= MOST_BYTES {
            w.push(message);
        }
    });
}

/// Runs `serve`, then adds the warnings it raised to its response.
pub async fn collect<B>(serve: impl Future<Output = Response<B>>) -> Response<B> {
    let (mut response, warnings) = WARNINGS
        .scope(RefCell::new(Vec::new()), async {
            let response = serve.await;
            (response, WARNINGS.with(|w| w.take()))
        })
        .await;
    for warning in warnings {
        if let Ok(value) = HeaderValue::from_str(&header(&warning)) {
            response.headers_mut().append(WARNING, value);
        }
    }
    response
}

/// RFC 7234 form with kube-apiserver's code and agent: `299 - "text"`.
fn header(text: &str) -> String {
    let escaped: String = text
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("299 - \"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_raised_while_serving_become_headers() {
        let response = collect(async {
            add(r#"unknown field "spec.foo""#);
            add("second\nline");
            Response::new(())
        })
        .await;
        let values: Vec<&str> = response
            .headers()
            .get_all(WARNING)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            values,
            [
                r#"299 - "unknown field \"spec.foo\"""#,
                r#"299 - "secondline""#
            ]
        );
        // Outside a request there is no list to add to, and no panic.
        add("nobody listens");
    }

    #[tokio::test]
    async fn a_response_carries_bounded_warnings() {
        let response = collect(async {
            add("x".repeat(10_000));
            for _ in 0..5_000 {
                add("many");
            }
            Response::new(())
        })
        .await;
        let values: Vec<usize> = response
            .headers()
            .get_all(WARNING)
            .iter()
            .map(|v| v.len())
            .collect();
        assert_eq!(values.len(), MOST_WARNINGS);
        assert!(values[0] < LONGEST + 16, "{}", values[0]);
    }
}
