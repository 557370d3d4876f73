//! Crash safety of the embedded log: a child appends in a loop and is killed
//! with SIGKILL at random moments, 20 times, on the same log directory. After
//! each kill the log is reopened and must hold every acknowledged record,
//! intact, at its acknowledged position, and serve no corrupt record.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::{EventLog, Position};
use mailflow_tests::conformance::read_all;
use mailflow_tests::crash::{TOPIC, check_value};
use rand::RngExt as _;

const KILLS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_twenty_kill_9s() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut acked: BTreeMap<Position, (u64, u64)> = BTreeMap::new();
    let mut rng = rand::rng();
    let mut next_seq = 0u64;
    for round in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_log-crash-child"))
            .arg(dir.path())
            .arg(next_seq.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let kill_after = Duration::from_millis(rng.random_range(30..400));
        // Read acknowledgements on a thread; kill from here at a random moment.
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        std::thread::sleep(kill_after);
        child.kill()?; // SIGKILL
        child.wait()?;
        let lines = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        for line in &lines {
            // A line cut by the kill has fewer than four fields: not acknowledged to us.
            let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
            if let [partition, offset, writer, seq] = fields[..] {
                acked.insert(Position { partition: partition as u32, offset }, (writer, seq));
                next_seq = next_seq.max(seq + 1);
            }
        }

        let log = EmbeddedLog::open(dir.path(), Options { segment_bytes: 256 * 1024 })?;
        log.open_all()?;
        let mut found = BTreeMap::new();
        // A child killed before it created the topic (a slow start under
        // load) leaves none; that is only right if it acknowledged nothing.
        let partitions = log.partitions(TOPIC).or_else(|err| if acked.is_empty() { Ok(0) } else { Err(err) })?;
        for partition in 0..partitions {
            for record in read_all(&log, TOPIC, partition, 0).await? {
                let identity = check_value(&record.value)
                    .with_context(|| format!("round {round}: corrupt record served at {:?}", record.position))?;
                found.insert(record.position, identity);
            }
        }
        for (position, identity) in &acked {
            let got = found.get(position);
            ensure!(
                got == Some(identity),
                "round {round}: acknowledged {identity:?} at {position:?} reads back as {got:?}"
            );
        }
        eprintln!(
            "round {round}: killed {:?} after start, {} acknowledged so far, {} records on disk",
            kill_after,
            acked.len(),
            found.len()
        );
        drop(log);
    }
    ensure!(acked.len() > 1000, "the child acknowledged too few records ({}) to mean anything", acked.len());
    Ok(())
}
