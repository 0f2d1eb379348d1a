//! Process lifecycle: bind, load the model in the background (`/health` answers meanwhile), serve,
//! and on SIGTERM/SIGINT: `/ready` 503 at once, keep serving for `server.prestop_s` (the load
//! balancer's time to notice), then drain: stop accepting, close idle connections, let in-flight
//! generations finish within `server.drain_timeout_s`, then return.
//!
//! Connections are served by our own accept loop over hyper: at most `server.max_connections`
//! open (more are answered 503 and closed), and a client must send each request's headers
//! within `server.header_read_timeout_s` (hyper starts that timer whenever it waits for a
//! request head, so an idle keep-alive connection is closed after it too). The drain waits for
//! generations, not connections: a client that never finishes sending a request cannot hold
//! the shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::metrics as m;
use crate::state::AppState;
use crate::testing::TestHooks;

#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight request finished.
    Drained,
    /// The drain timeout cut some requests off.
    DrainTimeout,
}

/// Sent to a connection over the cap before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 88\r\n\r\n{\"error\":\"too many open connections (server.max_connections)\",\"error_type\":\"overloaded\"}";

pub async fn run(cfg: Config, hooks: TestHooks) -> Result<Stopped, String> {
    let prometheus = crate::metrics::install()?;
    crate::metrics::spawn_upkeep(prometheus.clone());
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    let drain = Duration::from_secs(cfg.server.drain_timeout_s);
    let prestop = Duration::from_secs(cfg.server.prestop_s);
    let state = AppState::new(cfg, hooks, Some(prometheus));
    tracing::info!(addr = %local, "listening (model loading)");

    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<String>(1);
    let loader = state.clone();
    tokio::task::spawn_blocking(move || {
        match crate::startup::load_runtime(&loader.cfg, &loader.hooks) {
            Ok(rt) => {
                loader.set_runtime(rt);
                metrics::gauge!(crate::metrics::READY).set(1.0);
                tracing::info!("ready");
            }
            Err(e) => {
                let _ = fatal_tx.blocking_send(e);
            }
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let signalled = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.stopping.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::READY).set(0.0);
        if !prestop.is_zero() {
            tracing::info!(
                prestop_s = prestop.as_secs(),
                "shutdown requested: /ready answers 503, still serving during the pre-stop window"
            );
            tokio::time::sleep(prestop).await;
        }
        tracing::info!(
            "draining: not ready, no new connections or generations, finishing in-flight ones"
        );
        signalled.draining.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
    });

    let open = Arc::new(AtomicUsize::new(0));
    let server = serve(listener, state.clone(), stop_rx.clone(), open.clone());
    tokio::select! {
        r = server => {
            r?;
            Ok(drained(&state, &open, drain).await)
        }
        Some(e) = fatal_rx.recv() => Err(e),
    }
}

/// After the listener closed: waits until no generation is in flight (then briefly for their
/// responses to flush), or the drain timeout.
async fn drained(state: &AppState, open: &AtomicUsize, drain: Duration) -> Stopped {
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        let busy = state.in_flight.load(Ordering::SeqCst) > 0;
        let connections = open.load(Ordering::SeqCst);
        if !busy {
            let since = *idle_since.get_or_insert_with(Instant::now);
            // Connections mid-request (half-sent headers or bodies) are not waited for long.
            if connections == 0 || since.elapsed() > Duration::from_millis(500) {
                tracing::info!(connections_cut = connections, "drained; exiting");
                return Stopped::Drained;
            }
        } else {
            idle_since = None;
        }
        if started.elapsed() >= drain {
            tracing::warn!(
                drain_timeout_s = drain.as_secs(),
                in_flight = state.in_flight.load(Ordering::SeqCst),
                "drain timeout reached; exiting with requests still open"
            );
            return Stopped::DrainTimeout;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accepts until `stop` turns true; each connection is served on its own task and told to
/// finish gracefully (close once idle) when `stop` turns true.
async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) -> Result<(), String> {
    let cfg = &state.cfg.server;
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_s));
    let app = crate::app::app(state.clone());
    let mut accepting = stop.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = accepting.wait_for(|s| *s) => return Ok(()),
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            tracing::debug!(%peer, "connection refused: server.max_connections are open");
            tokio::spawn(refuse(tcp));
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Streamed tokens are small writes: Nagle would hold each until a delayed ACK.
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let mut stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let count = open.fetch_add(1, Ordering::SeqCst) + 1;
            metrics::gauge!(m::OPEN_CONNECTIONS).set(count as f64);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let mut told = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !told => {
                        conn.as_mut().graceful_shutdown();
                        told = true;
                    }
                }
            }
            let count = open.fetch_sub(1, Ordering::SeqCst) - 1;
            metrics::gauge!(m::OPEN_CONNECTIONS).set(count as f64);
        });
    }
}

async fn refuse(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(OVER_CAPACITY)).await;
    let _ = tcp.shutdown().await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
