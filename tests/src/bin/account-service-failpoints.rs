//! The `account-service` program built with the SDK's fail points on, for
//! crash tests: the same `concord_example_bank::cli::account_service::main`.

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_bank::cli::account_service::main())
}
