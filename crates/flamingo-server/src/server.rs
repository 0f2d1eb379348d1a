//! Process lifecycle: bind, load the model in the background (`/health` answers meanwhile), serve,
//! and on SIGTERM/SIGINT drain: stop accepting, `/ready` 503, let in-flight requests finish
//! within `server.drain_timeout_s`, then return.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::Config;
use crate::state::AppState;
use crate::testing::TestHooks;

#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight request finished.
    Drained,
    /// The drain timeout cut some requests off.
    DrainTimeout,
}

pub async fn run(cfg: Config, hooks: TestHooks) -> Result<Stopped, String> {
    let prometheus = crate::metrics::install()?;
    crate::metrics::spawn_upkeep(prometheus.clone());
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    let drain = Duration::from_secs(cfg.server.drain_timeout_s);
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

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signalled = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutdown requested: not ready, no new connections, draining in-flight requests"
        );
        signalled.draining.store(true, Ordering::SeqCst);
        metrics::gauge!(crate::metrics::READY).set(0.0);
        let _ = stop_tx.send(true);
    });

    let mut graceful = stop_rx.clone();
    // Streamed tokens are small writes: without TCP_NODELAY, Nagle holds each one back until the
    // client acknowledges the previous segment, and a delayed ACK makes that ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
    });
    let server = axum::serve(listener, crate::app::app(state)).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
    });
    let mut deadline = stop_rx;
    tokio::select! {
        r = server => {
            r.map_err(|e| format!("server: {e}"))?;
            tracing::info!("drained; exiting");
            Ok(Stopped::Drained)
        }
        _ = async {
            let _ = deadline.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(drain_timeout_s = drain.as_secs(), "drain timeout reached; exiting with requests still open");
            Ok(Stopped::DrainTimeout)
        }
        Some(e) = fatal_rx.recv() => Err(e),
    }
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
