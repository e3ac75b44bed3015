//! The `medrelay` binary: logging, runtime, exit code. Everything else is in the library.

use std::process::ExitCode;

/// mimalloc: bulk imports allocate many short strings from three threads; glibc's allocator spent
/// a quarter of the import time in malloc/free (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use medrelay::{Cli, exit_code_of, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; `MEDRELAY_LOG` (RUST_LOG syntax) sets medrelay's level. Third-party crates
    // are capped whatever it says (they log what they see, phone numbers included): see logging.rs.
    medrelay::logging::init(cli.log_format);
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
