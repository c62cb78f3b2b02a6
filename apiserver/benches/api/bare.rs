//! The API benchmark's bare servers: hyper+rustls with kplex's TLS setup
//! and no API work, in the benchmark's process or in one of their own
//! (this executable again), the ceilings kplex's rows are measured
//! against.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What a bare server answers a request with.
pub type Respond = Arc<
    dyn Fn(Request<hyper::body::Incoming>) -> Pin<Box<dyn Future<Output = Bytes> + Send>>
        + Send
        + Sync,
>;

/// A bare hyper+rustls server with kplex's TLS setup (same CA, client
/// certificates verified) answering every request with what `respond` gives,
/// on a runtime of its own (two workers, as kplex has).
pub fn bare_server(tls: Arc<rustls::ServerConfig>, respond: Respond) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let respond = respond.clone();
                        async move {
                            let mut response = Response::new(Full::new(respond(req).await));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    port
}

/// Set in a child of this benchmark that serves as a bare server in a
/// process of its own: the data directory it takes its TLS from and its
/// answer from (`response`).
pub const BARE_CHILD: &str = "KPLEX_BENCH_BARE_CHILD";

/// A [`bare_server`] in a process of its own (this executable again),
/// answering every request with the same bytes: the ceiling of a server
/// that, like kplex, does not share the client's process. Ends when
/// dropped.
pub struct BareProcess {
    child: std::process::Child,
    pub port: u16,
}

impl BareProcess {
    /// `dir` holds the CA (`pki/ca.crt`, `pki/ca.key`) it issues its
    /// serving certificate from.
    pub fn start(dir: &Path, response: &Bytes) -> BareProcess {
        use std::io::BufRead;
        std::fs::write(dir.join("response"), response).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(BARE_CHILD, dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the bare server's port");
        BareProcess { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareProcess {
    fn drop(&mut self) {
        // Closing its stdin ends it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The child's side of [`BareProcess`]: serves until its stdin closes.
pub async fn bare_child(dir: &Path) {
    let tls =
        kplex_apiserver::bootstrap::prepare(dir, &["127.0.0.1".to_owned()], "https://127.0.0.1")
            .unwrap()
            .tls;
    let response = Bytes::from(std::fs::read(dir.join("response")).unwrap());
    let port = bare_server(
        tls,
        Arc::new(move |_| {
            let response = response.clone();
            Box::pin(async move { response })
        }),
    );
    println!("{port}");
    let _ = tokio::task::spawn_blocking(|| {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
    })
    .await;
}
