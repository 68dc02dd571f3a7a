//! The `moat` command: run the broker.

fn main() -> std::process::ExitCode {
    moat::cli::run()
}
