//! `account-service`: one bank of the bank example (see
//! `concord_example_bank::cli`).

fn main() -> anyhow::Result<()> {
    concord_example_bank::cli::main()
}
