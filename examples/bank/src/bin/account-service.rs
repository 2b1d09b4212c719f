//! `account-service`: one bank of the bank example (see
//! `concord_example_bank::cli::account_service`).

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_bank::cli::account_service::main())
}
