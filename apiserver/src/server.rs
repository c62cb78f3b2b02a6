//! The HTTPS listener: TLS, the caller's identity, HTTP/1.1 and HTTP/2, and
//! graceful shutdown (in-flight requests finish; new connections stop).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
            let mut builder = auto::Builder::new(TokioExecutor::new());
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
