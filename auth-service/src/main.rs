//! `auth-service`: parse flags, start logging, run the command. Exit codes: 0 ok, 1 a
//! runtime failure (the database unreachable, a failed migration, unhealthy), 2 a
//! configuration or usage error (clap's own usage errors exit 2 as well).
#![forbid(unsafe_code)]
use std::{future::Future, pin::Pin, process::ExitCode};

use auth_service::{
    cmd,
    config::{Cli, Command},
    telemetry,
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

// mimalloc rather than the system allocator: a call's buffers are often allocated on
// one worker thread and freed on the other, and glibc's malloc then takes the other
// thread's arena lock. Under h2load's cold ValidateToken that was 0.65 futex calls per
// response sent (a thread waiting on the lock, or waking one); with mimalloc, which
// frees across threads without a lock, 0.01 (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Without transparent huge pages: mimalloc would back its arenas with 2 MiB pages
    // where the kernel offers them, and a small heap would take twice the memory
    // (`auth-bench --memory-only`: 36 MiB idle instead of 19). Set before the runtime's
    // threads start. On a kernel without the flag the call fails harmlessly, and only
    // the memory saving is lost.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("auth-service: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    // Traces (serve only): set up before logging, which hands them the spans.
    let traces = match &cli.command {
        Command::Serve(args) => match args.otel() {
            Ok(Some(otel)) => match auth_telemetry::otel::Traces::new(&otel) {
                Ok(traces) => Some(traces),
                Err(e) => {
                    telemetry::init("info", cli.log_format, None);
                    telemetry::failed(&auth_service::Error::Config(e));
                    return ExitCode::from(2);
                }
            },
            Ok(None) => None,
            Err(e) => {
                telemetry::init("info", cli.log_format, None);
                telemetry::failed(&e);
                return ExitCode::from(e.exit_code());
            }
        },
        _ => None,
    };
    telemetry::init(
        if serving { "info" } else { "warn" },
        cli.log_format,
        traces.as_ref(),
    );
    // Only `serve` catches SIGTERM/Ctrl-C; a one-shot command dies on them as usual.
    let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = if serving {
        Box::pin(shutdown_signal())
    } else {
        Box::pin(std::future::pending())
    };
    match cmd::execute(cli, traces, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telemetry::failed(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Resolves on SIGTERM (what systemd and Kubernetes send) or Ctrl-C. The handlers
/// are installed now, not when the future is first polled, so a signal that arrives
/// during startup (initdb, migrations) still leads to an orderly shutdown that stops
/// the embedded cluster, instead of killing the process and leaving it running.
fn shutdown_signal() -> impl Future<Output = ()> + Send {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
