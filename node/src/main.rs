//! The `shoal` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The process driver's supervisor runs as `shoal shim --task-dir DIR`: dispatch it
    // before clap and before any runtime, so it stays small and starts fast.
    let mut args = std::env::args();
    if std::env::args().nth(1).as_deref() == Some("shim") {
        let code = shoal_runtime::shim::run(args.by_ref().skip(2));
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = shoal::cli::Cli::parse();
    match shoal::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            if e.downcast_ref::<shoal::cli::UsageError>().is_some() {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
