//! The `mailflow` binary: everything is in [`mailflow_actors::cli`].

fn main() -> anyhow::Result<()> {
    mailflow_actors::cli::run()
}
