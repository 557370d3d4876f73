//! Reliability notes §2.6, DoS limits: a slowloris flood of a thousand
//! connections against the per-address limit and the command deadline while
//! mail still flows, and the limit on sessions in all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mailflow_events::received::ReceivedEvent;
use mailflow_tests::wire::{Reply, Wire, raise_open_file_limit};
use tokio::time::Instant;

use super::{accepted, connect_ehlo, expect, open_data, start_secured};

/// Attacking addresses: 127.0.0.10 and up.
const ATTACKERS: u8 = 10;
/// Connections each attacker opens.
const PER_ATTACKER: usize = 100;
/// `max_connections_per_ip` of the router under attack.
const PER_ADDRESS_LIMIT: usize = 50;
/// `command_timeout` of the router under attack: long enough for the whole
/// flood to connect while the first connections are still held.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of one attacking connection.
#[derive(Debug)]
enum Outcome {
    /// Refused at connect with this reply; then closed with nothing more said.
    Refused(Reply),
    /// Admitted; dripped a byte a second until the server answered this,
    /// this long after its banner (`None`: still open when the test gave up).
    Held(Option<(Reply, Duration)>),
}

/// Drips a byte a second, never ending the line, until the server says
/// something or well past the command timeout after the banner.
async fn drip(mut wire: Wire, banner_at: Instant) -> Outcome {
    let give_up = banner_at + COMMAND_TIMEOUT + Duration::from_secs(8);
    while Instant::now() < give_up {
        if wire.send(b"N").await.is_err() {
            break;
        }
        if let Ok(reply) = tokio::time::timeout(Duration::from_secs(1), wire.reply()).await {
            return Outcome::Held(reply.ok().map(|r| (r, banner_at.elapsed())));
        }
    }
    Outcome::Held(None)
}

/// One attacker: `PER_ATTACKER` connections from `source`, one after the
/// other; the admitted ones are left dripping in tasks of their own.
async fn attack(
    source: IpAddr,
    server: SocketAddr,
) -> anyhow::Result<(Vec<Outcome>, Vec<tokio::task::JoinHandle<Outcome>>)> {
    let mut refused = Vec::new();
    let mut held = Vec::new();
    for _ in 0..PER_ATTACKER {
        let mut wire = Wire::connect_from(source, server).await?;
        let banner = wire.reply().await?;
        if banner.code == 220 {
            held.push(tokio::spawn(drip(wire, Instant::now())));
        } else {
            let rest = wire.until_closed().await?;
            assert!(rest.is_empty(), "more after the refusal: {:?}", String::from_utf8_lossy(&rest));
            refused.push(Outcome::Refused(banner));
        }
    }
    Ok((refused, held))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_is_capped_per_address_and_cut_at_the_command_timeout_while_mail_flows() -> anyhow::Result<()>
{
    // A thousand connections from ten addresses, each admitted one sending a
    // byte a second and never a whole command. The per-address limit admits
    // fifty of each hundred (`421 4.7.0` to the rest); the command timeout
    // counts from the banner, not from the last byte, so every held one is
    // closed with `421 4.4.2` after it, long before the session timeout; and
    // an ordinary client gets its message through meanwhile.
    let open_files = raise_open_file_limit(8192)?;
    assert!(open_files >= 4096, "the flood needs about 2,000 descriptors; the limit is {open_files}");
    let server_settings = format!(
        "max_connections = 600\nmax_connections_per_ip = {PER_ADDRESS_LIMIT}\ncommand_timeout = \"{}s\"\nsession_timeout = \"10m\"",
        COMMAND_TIMEOUT.as_secs()
    );
    let (mut router, _pki) = start_secured(&server_settings, "")?;
    let server = router.smtp();
    let flood_started = Instant::now();
    let attackers: Vec<_> =
        (0..ATTACKERS).map(|n| tokio::spawn(attack(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + n)), server))).collect();
    let mut held = Vec::new();
    for (n, attacker) in attackers.into_iter().enumerate() {
        let (refused, admitted) = attacker.await??;
        assert_eq!(admitted.len(), PER_ADDRESS_LIMIT, "attacker {n}: admitted");
        assert_eq!(refused.len(), PER_ATTACKER - PER_ADDRESS_LIMIT, "attacker {n}: refused");
        for outcome in refused {
            let Outcome::Refused(reply) = outcome else { unreachable!("only refusals") };
            expect(&reply, "421 4.7.0", &format!("attacker {n}"));
        }
        held.extend(admitted);
    }
    let flooded_in = flood_started.elapsed();
    assert!(flooded_in < COMMAND_TIMEOUT / 2, "the flood took {flooded_in:?}; the counts above assume it is quick");

    // While five hundred sessions are held: an ordinary client from 127.0.0.1.
    let started = Instant::now();
    let (mut wire, _) = connect_ehlo(server).await?;
    open_data(&mut wire, "s@example.net", "bob@contoso.com").await?;
    wire.send(b"Subject: through the flood\r\n\r\nhi\r\n.\r\n").await?;
    expect(&wire.reply().await?, "250 2.0.0", "the ordinary client");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the ordinary client needed {took:?}");

    for (n, task) in held.into_iter().enumerate() {
        match task.await? {
            Outcome::Held(Some((reply, after))) => {
                expect(&reply, "421 4.4.2", &format!("held connection {n}"));
                assert!(
                    after >= COMMAND_TIMEOUT - Duration::from_secs(1),
                    "connection {n} closed early, after {after:?}"
                );
                assert!(after < COMMAND_TIMEOUT + Duration::from_secs(6), "connection {n} closed after {after:?}");
            }
            other => panic!("held connection {n}: {other:?}"),
        }
    }
    let (events, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 1);
    let refusals = events.iter().filter(|e| matches!(e.event, ReceivedEvent::ConnectionRefused(_))).count();
    assert_eq!(refusals, usize::from(ATTACKERS) * (PER_ATTACKER - PER_ADDRESS_LIMIT), "every refusal is recorded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_client_from_any_address_gets_421_4_7_0() -> anyhow::Result<()> {
    let (router, _pki) = start_secured("max_connections = 3\nmax_connections_per_ip = 3", "")?;
    let server = router.smtp();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut wire = Wire::connect_from("127.0.0.2".parse()?, server).await?;
        assert_eq!(wire.reply().await?.code, 220);
        open.push(wire);
    }
    let mut other = Wire::connect_from("127.0.0.3".parse()?, server).await?;
    expect(&other.reply().await?, "421 4.7.0", "a fourth session, from another address");
    assert!(other.until_closed().await?.is_empty(), "closed after the 421");
    // A session that ends frees its place.
    let mut first = open.remove(0);
    expect(&first.command("QUIT").await?, "221 2.0.0", "QUIT");
    first.until_closed().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Wire::connect_from("127.0.0.3".parse()?, server).await?;
        let banner = again.reply().await?;
        if banner.code == 220 {
            break;
        }
        expect(&banner, "421 4.7.0", "while the place is still taken");
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
