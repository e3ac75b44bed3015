//! The `medrelay` binary: logging, runtime, exit code. Everything else is in the library.

use std::process::ExitCode;

/// mimalloc: bulk imports allocate many short strings from three threads; glibc's allocator spent
/// a quarter of the import time in malloc/free (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use medrelay::{Cli, LogFormat, exit_code_of, run};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; `MEDRELAY_LOG` (or RUST_LOG syntax) sets the level. Dependencies that log
    // request URLs (which could carry search parameters) are kept at warn.
    let filter = EnvFilter::try_from_env("MEDRELAY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn,fhir_sdk=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("medrelay: cannot start the async runtime: {e}");
            return ExitCode::from(medrelay::exit::FAILURE);
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(run(cli, &mut stdout)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One clear line for a human: the error and its causes, no backtrace.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("medrelay: error: {}", chain.join(": "));
            ExitCode::from(exit_code_of(&e))
        }
    }
}
