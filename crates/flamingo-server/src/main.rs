//! `flamingo-server`: loads the model, starts the batching worker and serves the API.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use flamingo_server::app;
use flamingo_server::config::Config;

#[derive(Parser, Debug)]
#[command(version, about = "OpenFlamingo inference server")]
struct Args {
    /// TOML config file (see config/default.toml); FLAMINGO_<SECTION>_<KEY> variables override it.
    #[arg(long, env = "FLAMINGO_CONFIG")]
    config: Option<PathBuf>,
    /// Model folder (llama/, vision/ or vision_hf/, checkpoint.pt).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    port: Option<u16>,
    /// f32, f16 or bf16.
    #[arg(long)]
    dtype: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flamingo-server: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(d) = args.model_dir {
        cfg.model.dir = d;
    }
    if let Some(h) = args.host {
        cfg.server.host = h;
    }
    if let Some(p) = args.port {
        cfg.server.port = p;
    }
    if let Some(d) = args.dtype {
        cfg.model.dtype = d;
    }
    if let Some(d) = args.device {
        cfg.model.device = d;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("flamingo-server: configuration error: {e}");
        return std::process::ExitCode::from(2);
    }
    init_tracing(&cfg.server.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flamingo-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flamingo-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    if std::env::var(flamingo_server::session::SCRIPTED_OUTPUT_ENV).is_ok() {
        tracing::warn!(
            "{} is set: generated text is scripted (test hook)",
            flamingo_server::session::SCRIPTED_OUTPUT_ENV
        );
    }
    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let drain = Duration::from_secs(cfg.server.drain_timeout_s);
    let state = tokio::task::spawn_blocking(move || app::build_state(cfg, Some(prometheus)))
        .await
        .map_err(|e| e.to_string())??;
    let draining = state.draining.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    tracing::info!(%addr, "listening");
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining in-flight requests");
        draining.store(true, Ordering::SeqCst);
        let _ = signal_tx.send(true);
    });
    let mut graceful_rx = signal_rx.clone();
    let server = axum::serve(listener, app::app(state)).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|s| *s).await;
    });
    let mut deadline_rx = signal_rx;
    tokio::select! {
        r = server => r.map_err(|e| e.to_string())?,
        _ = async {
            let _ = deadline_rx.wait_for(|s| *s).await;
            tokio::time::sleep(drain).await;
        } => tracing::warn!("drain timeout reached; exiting with requests still open"),
    }
    tracing::info!("stopped");
    Ok(())
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
