//! Stand-alone process-driver supervisor (the `shoal` binary embeds the same code as its hidden
//! `shim` subcommand). Usage: `shoal-shim --task-dir DIR`.

fn main() {
    std::process::exit(shoal_runtime::shim::run(std::env::args_os().skip(1)));
}
