//! The `mailflow` command, built inside the test crate so that integration
//! tests can start the real daemon as a process (and kill it).

fn main() -> anyhow::Result<()> {
    mailflow_actors::cli::run()
}
