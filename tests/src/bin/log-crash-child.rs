//! Crash-test child: appends to an embedded log as fast as it can, from
//! several tasks at once, and prints each acknowledged record's position,
//! until it is killed. The parent (`tests/tests/embedded_crash.rs`) kills it
//! with SIGKILL at a random moment and checks the log.
//!
//! Usage: `log-crash-child <log dir> <first sequence number>`
//! Output: one line per acknowledged record: `partition offset writer seq`.

use std::io::Write as _;

use mailflow_events::log::embedded::{EmbeddedLog, Options};
use mailflow_events::log::{EventLog, TopicKind};
use mailflow_tests::crash::{TOPIC, WRITERS, record_value};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or_else(|| anyhow::anyhow!("usage: log-crash-child <dir> <first seq>"))?;
    let first: u64 = args.next().unwrap_or_default().parse().unwrap_or(0);
    // Small segments, so that kills also land around segment rolls.
    let log = EmbeddedLog::open(&dir, Options { segment_bytes: 256 * 1024 })?;
    log.create_topic(TOPIC, 2, TopicKind::Events).await?;
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<String>();
    for writer in 0..WRITERS {
        let log = log.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            for seq in first.. {
                let key = format!("w{writer}");
                let value = record_value(writer, seq);
                match log.append(TOPIC, key.as_bytes(), &value).await {
                    Ok(p) => {
                        if acks.send(format!("{} {} {writer} {seq}\n", p.partition, p.offset)).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        eprintln!("append failed: {err}");
                        return;
                    }
                }
            }
        });
    }
    drop(acks);
    let mut stdout = std::io::stdout().lock();
    while let Some(line) = acked.recv().await {
        stdout.write_all(line.as_bytes())?;
        stdout.flush()?;
    }
    Ok(())
}
