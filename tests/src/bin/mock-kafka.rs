//! librdkafka's mock cluster as a broker process on loopback, with mailflow's
//! topics made beforehand (the mock serves no CreateTopics).
//!
//! Tests use it where the broker must expire the session of a member that
//! was killed with SIGKILL, so that the group moves its partitions to the
//! members left: a Kafka broker does that after `session.timeout.ms`, noida-db
//! 0.2.3 never does, and the mock does (`rdkafka_mock_cgrp.c`).
//!
//! Usage: `mock-kafka <partitions per topic>`. Prints `bootstrap <servers>`
//! once the topics exist and serves until its standard input closes.

use std::io::{BufRead as _, Write as _};

use rdkafka::mocking::MockCluster;

fn main() -> anyhow::Result<()> {
    let partitions: i32 = std::env::args().nth(1).unwrap_or_else(|| "3".to_string()).parse()?;
    let cluster = MockCluster::new(1)?;
    for topic in mailflow_events::topic::ALL {
        cluster.create_topic(topic, partitions, 1)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "bootstrap {}", cluster.bootstrap_servers())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}
