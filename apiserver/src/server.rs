//! The HTTPS listener: TLS, the caller's identity, HTTP/1.1 and HTTP/2, and
//! graceful shutdown (in-flight requests finish; new connections stop).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use kplex_certs::Identity;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::handler::{handle, Context};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that has sent no request this long after its handshake is
/// closed (an HTTP/2 client that never sends its preface, a slow header).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an HTTP/1.1 request's headers may take to arrive (as
/// kube-apiserver's 32 s read-header timeout).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, say): retrying at
/// once would spin and flood the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` completes, then drains open connections.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed (reported at most once a second)");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = &mut shutdown => break,
                    }
                }
            },
            _ = &mut shutdown => break,
        };
        // Small writes (a watch event, a short response) go out at once:
        // with Nagle's algorithm they could wait for the peer's delayed ACK,
        // some 40 ms (Go's servers, kube-apiserver's among them, do the same).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let caller: Option<Arc<Identity>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| kplex_certs::identity_from_der(leaf).ok())
                .map(Arc::new);
            let served = Arc::new(AtomicBool::new(false));
            let first = served.clone();
            let service = service_fn(move |req| {
                first.store(true, Ordering::Relaxed);
                let ctx = ctx.clone();
                let caller = caller.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(&ctx, caller.as_ref(), req).await)
                }
            });
            let mut builder = auto::Builder::new(Inline);
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let conn = watcher.watch(conn.into_owned());
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = &mut conn => Some(ended),
                _ = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None if !served.load(Ordering::Relaxed) => {
                    tracing::debug!(%peer, "no request in {FIRST_REQUEST_TIMEOUT:?}; closing");
                    return;
                }
                None => conn.await,
            };
            match ended {
                Ok(()) => tracing::debug!(%peer, "connection closed"),
                Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
            }
        });
    }
    drop(listener);
    tracing::info!("draining open connections");
    // send_replace: the value must change even when no watch is open yet,
    // or a watch that starts during the drain would never see it.
    ctx.stopping.send_replace(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// Runs an HTTP/2 connection's requests. Each is polled once where the
/// connection reads it, and spawned as a task of its own only if it has to
/// wait (for a seat, storage, a watch's events). A GET answered from
/// memory thus never becomes a task: no task to allocate, schedule and
/// wake, and its response goes out with those of the other requests of
/// the same read, in one write.
#[derive(Clone, Copy, Debug)]
struct Inline;

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, work: F) {
        let mut work = Box::pin(work);
        // The first poll's waker is never woken: a future that must wait
        // is polled again as a task, and registers that task's waker then.
        let mut cx = TaskContext::from_waker(Waker::noop());
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                tokio::spawn(work);
            }
            // As a task's would, the panic ends this request only (its
            // stream is reset when the future is dropped), not the
            // connection that read it. The panic hook has reported it.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_request_that_need_not_wait_is_served_before_execute_returns() {
        let served = Arc::new(AtomicBool::new(false));
        let flag = served.clone();
        Inline.execute(async move { flag.store(true, Ordering::SeqCst) });
        assert!(served.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_request_that_waits_finishes_as_a_task_when_woken() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        Inline.execute(async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let value = rx.await.unwrap();
            done_tx.send(value + 1).unwrap();
        });
        // Polled once, inline, and waiting: the value is not there yet.
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        tx.send(41).unwrap();
        assert_eq!(done_rx.await.unwrap(), 42);
    }

    #[tokio::test]
    async fn a_request_that_panics_ends_alone() {
        Inline.execute(async { panic!("a handler's bug") });
        // The caller (the connection) goes on, and so do later requests.
        let served = Arc::new(AtomicBool::new(false));
        let flag = served.clone();
        Inline.execute(async move { flag.store(true, Ordering::SeqCst) });
        assert!(served.load(Ordering::SeqCst));
    }
}
