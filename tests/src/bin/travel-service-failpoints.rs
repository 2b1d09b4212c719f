//! The `travel-service` program built with the SDK's fail points on, for
//! crash tests: the same `concord_example_travel::cli::travel_service::main`.

fn main() -> std::process::ExitCode {
    concord_coordinator::cli::exit(concord_example_travel::cli::travel_service::main())
}
