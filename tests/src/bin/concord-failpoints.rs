//! The `concord` program built with fail points on, for crash tests: the
//! same `concord_coordinator::cli::main` as the `concord` binary.

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_coordinator::cli::main())
}
