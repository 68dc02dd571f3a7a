//! The `moat` command, built inside the tests package so that the end-to-end tests can run the
//! broker as a separate process (and kill it with SIGKILL): Cargo hands integration tests the
//! path of their own package's binaries only (`CARGO_BIN_EXE_<name>`).

fn main() -> std::process::ExitCode {
    moat::cli::run()
}
