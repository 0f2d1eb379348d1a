//! `flamingo-server`: configuration, logging, then [`flamingo_server::server::run`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flamingo_server::config::{Config, DTypeName, LogFormat};
use flamingo_server::testing::TestHooks;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "OpenFlamingo inference server (TGI- and OpenAI-compatible HTTP API)"
)]
struct Args {
    /// TOML config file (see config/default.toml); FLAMINGO_<SECTION>_<KEY> variables override it, flags override both.
    #[arg(long, env = "FLAMINGO_CONFIG")]
    config: Option<PathBuf>,
    /// Model folder (llama/, vision/ or vision_hf/, checkpoint.pt); default: the bundled tiny model.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Bind address (server.host).
    #[arg(long)]
    host: Option<String>,
    /// Port (server.port); 0 picks a free one (logged).
    #[arg(long)]
    port: Option<u16>,
    /// Model dtype (model.dtype).
    #[arg(long, value_enum)]
    dtype: Option<DTypeName>,
    /// cpu, cuda or cuda:N (model.device).
    #[arg(long)]
    device: Option<String>,
    /// Log line format (server.log_format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("flamingo-server: configuration error: {e}");
        ExitCode::from(2)
    };
    let loaded = match Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let mut cfg = loaded.config;
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
    if let Some(f) = args.log_format {
        cfg.server.log_format = f;
    }
    if let Err(e) = cfg.validate() {
        return fail(&e);
    }
    let hooks = match TestHooks::from_env() {
        Ok(h) => h,
        Err(e) => return fail(&e),
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing(cfg.server.log_format);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if hooks.any() {
        tracing::warn!(
            ?hooks,
            "FLAMINGO_TEST_* hooks are set: this server is for tests only"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flamingo-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(flamingo_server::server::run(cfg, hooks));
    // Blocking-pool threads (image decoding) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        // A requested shutdown succeeded even if the drain timeout cut requests (logged).
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("flamingo-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    // Closing a span logs its duration: the per-request line, and per-stage lines at debug.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(std::io::stderr().is_terminal())
        // Reporting a failed log write goes to stderr with `eprintln!`, which panics when stderr
        // is a closed pipe: a dead log collector must not take request threads down with it.
        .log_internal_errors(false);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
