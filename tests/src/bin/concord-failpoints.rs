//! The `concord` program built with fail points on, for crash tests: the
//! same `concord_coordinator::cli::main` as the `concord` binary.

fn main() -> anyhow::Result<()> {
    concord_coordinator::cli::main()
}
