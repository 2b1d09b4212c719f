//! The `travel-service` program built with the SDK's fail points on, for
//! crash tests: the same `concord_example_travel::cli::main`.

fn main() -> anyhow::Result<()> {
    concord_example_travel::cli::main()
}
