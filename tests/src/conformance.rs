//! The event-log conformance suite: what both backends must guarantee.
//!
//! Each case is a plain async function over a fresh [`TestLog`]; the
//! [`conformance_suite!`](crate::conformance_suite) macro turns them into one
//! test per case for a backend. Only what real Kafka guarantees is asserted,
//! so the suite can run against any Kafka-protocol broker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use mailflow_events::content::{self, ContentEncoding};
use mailflow_events::log::{EventLog, GroupMember, LogError, Position, Record, TopicKind};
use rand::RngExt as _;

use crate::logs::TestLog;

/// How long any wait in the suite may take before the case fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `member` until `n` records arrived (or the deadline passes).
pub async fn poll_n(member: &mut dyn GroupMember, n: usize) -> anyhow::Result<Vec<Record>> {
    let deadline = Instant::now() + DEADLINE;
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        ensure!(Instant::now() < deadline, "only {} of {n} records arrived within {DEADLINE:?}", records.len());
        if let Some(record) = member.poll(Duration::from_millis(500)).await? {
            records.push(record);
        }
    }
    Ok(records)
}

/// Reads a whole partition from `from` to its end.
pub async fn read_all(log: &dyn EventLog, topic: &str, partition: u32, from: u64) -> anyhow::Result<Vec<Record>> {
    let end = log.end_offset(topic, partition).await?;
    let mut records = Vec::new();
    let mut offset = from;
    while offset < end {
        let batch = log.read(topic, partition, offset, 500).await?;
        ensure!(!batch.is_empty(), "read of {topic}/{partition} at {offset} returned nothing before end {end}");
        offset = batch.last().map_or(offset, |r| r.position.offset + 1);
        records.extend(batch);
    }
    Ok(records)
}

/// Appends from many tasks at once; each key's records must come back in the
/// order of their acknowledgements, at the positions the acknowledgements gave.
pub async fn per_partition_order_is_kept_under_concurrent_appends(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(4).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let log = Arc::clone(&t.log);
        let topic = topic.clone();
        tasks.spawn(async move {
            let key = format!("key-{writer}");
            let mut acked = Vec::new();
            for seq in 0..50 {
                let value = format!("{writer}:{seq}");
                let position = log.append(&topic, key.as_bytes(), value.as_bytes()).await?;
                acked.push((position, value));
            }
            Ok::<_, LogError>(acked)
        });
    }
    let mut acked: BTreeMap<Position, String> = BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        acked.extend(result??);
    }
    ensure!(acked.len() == 400, "400 distinct positions expected, got {}", acked.len());
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    for partition in 0..4 {
        for record in read_all(&*t.log, &topic, partition, 0).await? {
            let value = String::from_utf8(record.value.to_vec())?;
            ensure!(
                acked.get(&record.position) == Some(&value),
                "{:?} holds {value}, acked {:?}",
                record.position,
                acked.get(&record.position)
            );
            let (writer, seq) = value.split_once(':').context("value format")?;
            let seq: i64 = seq.parse()?;
            let previous = last_seq.insert(writer.to_string(), seq).unwrap_or(-1);
            ensure!(seq == previous + 1, "writer {writer}: {seq} after {previous}");
            ensure!(record.key == format!("key-{writer}").as_bytes(), "key mismatch");
        }
    }
    ensure!(last_seq.values().all(|&s| s == 49), "every writer's 50 records read back: {last_seq:?}");
    Ok(())
}

/// Every acknowledged record is read back intact, whatever its size.
pub async fn no_acknowledged_record_is_lost(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(3).await?;
    let mut rng = rand::rng();
    let mut acked = BTreeMap::new();
    for i in 0..300u32 {
        let size = match i % 3 {
            0 => 0,
            1 => rng.random_range(1..2048),
            _ => rng.random_range(2048..64 * 1024),
        };
        let value: Vec<u8> = (0..size).map(|_| rng.random()).collect();
        let key = format!("k{}", i % 17);
        let position = t.log.append(&topic, key.as_bytes(), &value).await?;
        ensure!(acked.insert(position, (key, value)).is_none(), "position {position:?} acknowledged twice");
    }
    let mut seen = 0;
    for partition in 0..3 {
        for record in read_all(&*t.log, &topic, partition, 0).await? {
            let (key, value) = acked.get(&record.position).context("a record that was never acknowledged")?;
            ensure!(record.key == key.as_bytes() && record.value == value, "record at {:?} differs", record.position);
            seen += 1;
        }
    }
    ensure!(seen == acked.len(), "{seen} of {} acknowledged records read back", acked.len());
    Ok(())
}

/// A member that handled records without committing them dies; the group gets
/// them again, from the committed offset on.
pub async fn uncommitted_records_are_redelivered_after_a_member_dies(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(1).await?;
    for i in 0..20 {
        t.log.append_to(&topic, 0, b"k", format!("r{i}").as_bytes()).await?;
    }
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let mut first = t.log.join(&group, &[&topic]).await?;
    let got = poll_n(&mut *first, 20).await?;
    ensure!(got.iter().map(|r| r.position.offset).eq(0..20), "offsets in order");
    first.commit(&topic, 0, 8).await?;
    drop(first);

    let mut second = t.log.join(&group, &[&topic]).await?;
    let again = poll_n(&mut *second, 12).await?;
    let offsets: Vec<u64> = again.iter().map(|r| r.position.offset).collect();
    ensure!(offsets == (8..20).collect::<Vec<_>>(), "redelivered from the committed offset: {offsets:?}");
    ensure!(again[0].value == b"r8"[..], "the record at offset 8 is r8");
    second.commit(&topic, 0, 20).await?;
    second.leave().await?;

    let mut third = t.log.join(&group, &[&topic]).await?;
    t.log.append_to(&topic, 0, b"k", b"r20").await?;
    let next = poll_n(&mut *third, 1).await?;
    ensure!(
        next[0].position.offset == 20,
        "after a full commit only new records come: got {}",
        next[0].position.offset
    );
    Ok(())
}

/// Polls every member until their assignments are disjoint and cover `all`.
async fn settle(
    members: &mut [&mut Box<dyn GroupMember>],
    all: &BTreeSet<(String, u32)>,
) -> anyhow::Result<Vec<Record>> {
    let deadline = Instant::now() + DEADLINE;
    let mut early = Vec::new();
    loop {
        for member in members.iter_mut() {
            if let Some(record) = member.poll(Duration::from_millis(200)).await? {
                early.push(record);
            }
        }
        let sets: Vec<BTreeSet<(String, u32)>> = members.iter().map(|m| m.assignment().into_iter().collect()).collect();
        let union: BTreeSet<_> = sets.iter().flatten().cloned().collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        if &union == all && total == all.len() && sets.iter().all(|s| !s.is_empty()) {
            return Ok(early);
        }
        if Instant::now() > deadline {
            bail!("assignments did not settle: {sets:?}");
        }
    }
}

/// Two members split the partitions; when one dies the other takes its share,
/// including the records it had not committed.
pub async fn two_members_split_partitions_and_take_over_a_dead_members(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(4).await?;
    let all: BTreeSet<(String, u32)> = (0..4).map(|p| (topic.clone(), p)).collect();
    let group = format!("g-{}", uuid::Uuid::new_v4().simple());
    let mut a = t.log.join(&group, &[&topic]).await?;
    let mut b = t.log.join(&group, &[&topic]).await?;
    let early = settle(&mut [&mut a, &mut b], &all).await?;
    ensure!(early.is_empty(), "nothing was appended yet");
    for partition in 0..4 {
        t.log.append_to(&topic, partition, b"k", format!("p{partition}").as_bytes()).await?;
    }
    let a_owns: BTreeSet<_> = a.assignment().into_iter().collect();
    let b_owns: BTreeSet<_> = b.assignment().into_iter().collect();
    let got_a = poll_n(&mut *a, a_owns.len()).await?;
    let got_b = poll_n(&mut *b, b_owns.len()).await?;
    for record in &got_a {
        ensure!(a_owns.contains(&(topic.clone(), record.position.partition)), "a got a partition it does not own");
        a.commit(&topic, record.position.partition, record.position.offset + 1).await?;
    }
    for record in &got_b {
        ensure!(b_owns.contains(&(topic.clone(), record.position.partition)), "b got a partition it does not own");
    }
    // b dies without committing: its records come again, to a.
    drop(b);
    let deadline = Instant::now() + DEADLINE;
    let mut taken_over = Vec::new();
    while taken_over.len() < b_owns.len() {
        ensure!(Instant::now() < deadline, "a did not take over b's partitions: {:?}", a.assignment());
        if let Some(record) = a.poll(Duration::from_millis(500)).await? {
            taken_over.push(record);
        }
    }
    let partitions: BTreeSet<u32> = taken_over.iter().map(|r| r.position.partition).collect();
    let expected: BTreeSet<u32> = b_owns.iter().map(|(_, p)| *p).collect();
    ensure!(partitions == expected, "a received b's uncommitted records: {partitions:?} vs {expected:?}");
    ensure!(a.assignment().len() == 4, "a owns every partition now");
    Ok(())
}

/// Two groups consume the same records independently.
pub async fn independent_groups_each_see_every_record(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(2).await?;
    for i in 0..10 {
        t.log.append(&topic, format!("k{i}").as_bytes(), b"v").await?;
    }
    let mut one = t.log.join(&format!("g1-{topic}"), &[&topic]).await?;
    let mut two = t.log.join(&format!("g2-{topic}"), &[&topic]).await?;
    let first = poll_n(&mut *one, 10).await?;
    for record in &first {
        one.commit(&topic, record.position.partition, record.position.offset + 1).await?;
    }
    let second = poll_n(&mut *two, 10).await?;
    let a: BTreeSet<Position> = first.iter().map(|r| r.position).collect();
    let b: BTreeSet<Position> = second.iter().map(|r| r.position).collect();
    ensure!(a.len() == 10 && a == b, "both groups saw the same ten records");
    Ok(())
}

/// Replay needs no group: from 0 and from any offset.
pub async fn replay_from_zero_and_from_an_offset(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(1).await?;
    for i in 0..100 {
        t.log.append_to(&topic, 0, b"k", format!("{i}").as_bytes()).await?;
    }
    ensure!(t.log.end_offset(&topic, 0).await? == 100, "end offset is 100");
    let all = read_all(&*t.log, &topic, 0, 0).await?;
    ensure!(all.iter().map(|r| r.value.to_vec()).eq((0..100).map(|i| format!("{i}").into_bytes())), "replay from 0");
    let tail = read_all(&*t.log, &topic, 0, 73).await?;
    ensure!(tail.len() == 27 && tail[0].value == b"73"[..], "replay from 73");
    let some = t.log.read(&topic, 0, 40, 5).await?;
    ensure!(some.iter().map(|r| r.position.offset).eq(40..45), "bounded read of 5 from 40");
    ensure!(t.log.read(&topic, 0, 100, 10).await?.is_empty(), "reading at the end returns nothing");
    Ok(())
}

/// A member waiting at the end is woken by a later append.
pub async fn a_member_follows_the_tail(t: TestLog) -> anyhow::Result<()> {
    let topic = t.topic(1).await?;
    let mut member = t.log.join(&format!("g-{topic}"), &[&topic]).await?;
    ensure!(member.poll(Duration::from_millis(300)).await?.is_none(), "nothing yet");
    let log = Arc::clone(&t.log);
    let appender_topic = topic.clone();
    let appender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.append_to(&appender_topic, 0, b"k", b"late").await
    });
    let got = poll_n(&mut *member, 1).await?;
    appender.await??;
    ensure!(got[0].value == b"late"[..], "the late record arrives");
    Ok(())
}

/// Records up to the chunk size, and a 35 MiB body split into chunks, come
/// back byte for byte; a record over the limit is refused, not truncated.
pub async fn large_messages_round_trip_byte_exact(t: TestLog) -> anyhow::Result<()> {
    let mut rng = rand::rng();
    let topic = t.topic(1).await?;
    let chunk: Vec<u8> = (0..content::CHUNK_SIZE).map(|_| rng.random()).collect();
    let position = t.log.append_to(&topic, 0, b"big", &chunk).await?;
    let back = t.log.read(&topic, 0, position.offset, 1).await?;
    ensure!(back.len() == 1 && back[0].value == chunk, "a 512 KiB record round-trips");
    let too_big = vec![0u8; 4 * 1024 * 1024];
    match t.log.append_to(&topic, 0, b"huge", &too_big).await {
        Err(LogError::RecordTooLarge { .. }) => {}
        other => bail!("a 4 MiB record must be refused as too large, got {other:?}"),
    }

    t.log.create_topic(mailflow_events::topic::CONTENT, 3, TopicKind::Events).await?;
    let body: Vec<u8> = (0..35 * 1024 * 1024).map(|_| rng.random()).collect();
    let message_id = uuid::Uuid::new_v4().to_string();
    let other_id = uuid::Uuid::new_v4().to_string();
    let reference = content::store(&*t.log, &message_id, "test", &body, ContentEncoding::Binary).await?;
    // Another message's chunks between ours must not confuse the reader, nor
    // chunks in the JSON form, which a log may hold next to binary ones.
    content::store(&*t.log, &other_id, "test", b"small", ContentEncoding::Json).await?;
    ensure!(reference.chunks == 70, "35 MiB is 70 chunks of 512 KiB, got {}", reference.chunks);
    let loaded = content::load(&*t.log, &message_id, &reference).await?;
    ensure!(loaded == body, "35 MiB body round-trips byte-exact");
    let json_id = uuid::Uuid::new_v4().to_string();
    let json_body = &body[..content::CHUNK_SIZE * 2 + 1000];
    let json_reference = content::store(&*t.log, &json_id, "test", json_body, ContentEncoding::Json).await?;
    ensure!(json_reference.chunks == 3, "three JSON chunks, got {}", json_reference.chunks);
    let loaded = content::load(&*t.log, &json_id, &json_reference).await?;
    ensure!(loaded == json_body, "a body in JSON chunks round-trips byte-exact");
    Ok(())
}

/// One `#[tokio::test]` per conformance case, for the backend `make` builds.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            per_partition_order_is_kept_under_concurrent_appends,
            no_acknowledged_record_is_lost,
            uncommitted_records_are_redelivered_after_a_member_dies,
            two_members_split_partitions_and_take_over_a_dead_members,
            independent_groups_each_see_every_record,
            replay_from_zero_and_from_an_offset,
            a_member_follows_the_tail,
            large_messages_round_trip_byte_exact,
        );
    };
    (@cases $make:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                let log = $make?;
                $crate::conformance::$case(log).await
            }
        )*
    };
}
