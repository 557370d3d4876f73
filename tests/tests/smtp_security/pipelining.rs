//! Reliability notes §2.2, pipelining and transaction stuffing: what a
//! client may send before a reply (RFC 2920), and bursts bounded by the
//! error and recipient limits (§2.6).

use mailflow_events::received::{ReceivedEvent, RejectReason};
use mailflow_tests::wire::Wire;

use super::{accepted, connect_ehlo, expect, open_data, start_secured};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_sent_with_data_before_the_354_gets_554_5_5_0_and_nothing_is_stored() -> anyhow::Result<()> {
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    wire.send(
        b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n\
          From: s@example.net\r\nSubject: stuffed\r\n\r\nbody\r\n.\r\n",
    )
    .await?;
    let replies = wire.replies(3).await?;
    expect(&replies[0], "250 2.1.0", "MAIL");
    expect(&replies[1], "250 2.1.5", "RCPT");
    expect(&replies[2], "554 5.5.0", "DATA followed by content in the same write");
    assert!(wire.until_closed().await?.is_empty(), "closed after the 554, nothing more said");
    let (_, messages) = accepted(&mut router).await?;
    assert!(messages.is_empty(), "{messages:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_was_not_offered_pipelining_may_not_pipeline() -> anyhow::Result<()> {
    // §2.2: PIPELINING is offered in the EHLO reply only; without it, a second
    // command before the first reply is a synchronization error.
    let (mut router, _pki) = start_secured("", "")?;
    let transaction = b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n";

    // No greeting at all.
    let (mut wire, _) = Wire::connect(router.smtp()).await?;
    wire.send(transaction).await?;
    expect(&wire.reply().await?, "554 5.5.0", "pipelined before any EHLO");
    assert!(wire.until_closed().await?.is_empty(), "closed after the 554");

    // HELO: no extensions, so no PIPELINING.
    let (mut wire, _) = Wire::connect(router.smtp()).await?;
    let helo = wire.command("HELO client.example").await?;
    assert_eq!(helo.code, 250, "{helo}");
    wire.send(transaction).await?;
    expect(&wire.reply().await?, "554 5.5.0", "pipelined after HELO");
    assert!(wire.until_closed().await?.is_empty(), "closed after the 554");

    // HELO and a command in one write.
    let (mut wire, _) = Wire::connect(router.smtp()).await?;
    wire.send(b"HELO client.example\r\nMAIL FROM:<s@example.net>\r\n").await?;
    expect(&wire.reply().await?, "554 5.5.0", "HELO is the last of a group");
    assert!(wire.until_closed().await?.is_empty(), "closed after the 554");

    // The same group after EHLO is legal and answered in order.
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    open_data(&mut wire, "s@example.net", "bob@contoso.com").await?;
    wire.send(b"Subject: legal\r\n\r\nhi\r\n.\r\n").await?;
    expect(&wire.reply().await?, "250 2.0.0", "end of data");
    let (_, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 1, "only the EHLO client's message: {messages:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_the_end_of_data_are_answered_at_once() -> anyhow::Result<()> {
    // RFC 2920 lets the final dot share a write with the next transaction or
    // QUIT; each must be answered without the client sending anything more.
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    open_data(&mut wire, "s@example.net", "bob@contoso.com").await?;
    wire.send(
        b"Subject: one\r\n\r\nfirst\r\n.\r\n\
          MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@contoso.com>\r\nDATA\r\n",
    )
    .await?;
    let replies = wire.replies(4).await?;
    expect(&replies[0], "250 2.0.0", "first message");
    expect(&replies[1], "250 2.1.0", "MAIL behind the dot");
    expect(&replies[2], "250 2.1.5", "RCPT behind the dot");
    assert_eq!(replies[3].code, 354, "DATA behind the dot: {}", replies[3]);
    wire.send(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n").await?;
    let replies = wire.replies(2).await?;
    expect(&replies[0], "250 2.0.0", "second message");
    expect(&replies[1], "221 2.0.0", "QUIT behind the dot");
    assert!(wire.until_closed().await?.is_empty(), "closed after the 221");
    let (_, messages) = accepted(&mut router).await?;
    let mut subjects: Vec<Option<&str>> = messages.iter().map(|(_, m)| m.subject.as_deref()).collect();
    subjects.sort();
    assert_eq!(subjects, [Some("one"), Some("two")]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_commands_is_cut_off_at_max_errors_with_421_4_7_0() -> anyhow::Result<()> {
    // §2.6 errors/junk: a thousand bad commands in one write get twenty
    // replies (max_errors, default 20), the last followed by 421 and the close.
    let (router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    wire.send("BOGUS\r\n".repeat(1000).as_bytes()).await?;
    for n in 1..=20 {
        expect(&wire.reply().await?, "500 5.5.1", &format!("bad command {n}"));
    }
    expect(&wire.reply().await?, "421 4.7.0", "past max_errors");
    assert!(wire.until_closed().await?.is_empty(), "nothing answered after the 421");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_recipient_harvest_is_cut_off_at_max_errors() -> anyhow::Result<()> {
    // Directory harvesting (spec 2.4 DBEB) in one write: every unknown
    // recipient is a permanent refusal and counts toward max_errors.
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    let mut burst = String::from("MAIL FROM:<s@example.net>\r\n");
    for n in 0..1000 {
        burst.push_str(&format!("RCPT TO:<guess{n}@contoso.com>\r\n"));
    }
    wire.send(burst.as_bytes()).await?;
    expect(&wire.reply().await?, "250 2.1.0", "MAIL");
    for n in 0..20 {
        let reply = wire.reply().await?;
        expect(&reply, "550 5.4.1", &format!("guess{n}"));
        assert_eq!(reply.text(), "5.4.1 Recipient address rejected: Access denied");
    }
    expect(&wire.reply().await?, "421 4.7.0", "past max_errors");
    assert!(wire.until_closed().await?.is_empty(), "nothing answered after the 421");
    let events = router.received_events().await?;
    let refused = events
        .iter()
        .filter(
            |e| matches!(&e.event, ReceivedEvent::RecipientRejected(r) if r.reason == RejectReason::UnknownRecipient),
        )
        .count();
    assert_eq!(refused, 20, "only the answered guesses were looked at and recorded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_past_the_limit_get_452_4_5_3_and_the_first_200_are_kept() -> anyhow::Result<()> {
    // §2.6 recipients: at least 100 must be taken (RFC 5321 §4.5.3.1.8); past
    // max_recipients (default 200) `452 4.5.3`, in a pipelined burst too.
    let (mut router, _pki) = start_secured("", "")?;
    let (mut wire, _) = connect_ehlo(router.smtp()).await?;
    let mut burst = String::from("MAIL FROM:<s@example.net>\r\n");
    for n in 0..201 {
        // fabrikam.com is an internal-relay domain: any local part is accepted.
        burst.push_str(&format!("RCPT TO:<user{n:03}@fabrikam.com>\r\n"));
    }
    burst.push_str("DATA\r\n");
    wire.send(burst.as_bytes()).await?;
    expect(&wire.reply().await?, "250 2.1.0", "MAIL");
    for n in 0..200 {
        expect(&wire.reply().await?, "250 2.1.5", &format!("recipient {n}"));
    }
    expect(&wire.reply().await?, "452 4.5.3", "recipient 201");
    assert_eq!(wire.reply().await?.code, 354);
    wire.send(b"Subject: many\r\n\r\nhi\r\n.\r\n").await?;
    expect(&wire.reply().await?, "250 2.0.0", "end of data");
    let (events, messages) = accepted(&mut router).await?;
    assert_eq!(messages.len(), 1);
    let recipients: Vec<&str> = messages[0].1.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(recipients.len(), 200);
    assert_eq!((recipients[0], recipients[199]), ("user000@fabrikam.com", "user199@fabrikam.com"));
    let over: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            ReceivedEvent::RecipientRejected(r) if r.reason == RejectReason::TooManyRecipients => {
                Some(r.address.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(over, ["user200@fabrikam.com"]);
    Ok(())
}
