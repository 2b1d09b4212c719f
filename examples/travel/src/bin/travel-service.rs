//! `travel-service`: one service of the travel example (see
//! `concord_example_travel::cli`).

fn main() -> anyhow::Result<()> {
    concord_example_travel::cli::main()
}
