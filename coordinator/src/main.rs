//! `concord`: the coordinator's command line (see `concord_coordinator::cli`).

fn main() -> anyhow::Result<()> {
    concord_coordinator::cli::main()
}
