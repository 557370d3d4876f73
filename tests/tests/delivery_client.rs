//! The delivery client against real peers: Postfix's smtp-sink (SMTP,
//! PIPELINING, DSN, connection reuse, its own soft and hard rejections), a
//! private Postfix with STARTTLS (every TLS policy, certificate checks),
//! Dovecot LMTP (per-recipient replies, mail landing in a Maildir), and the
//! scriptable sink for what no real peer does on demand (chosen 4xx/5xx at
//! each stage, drops, hangs, garbage).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mailflow_actors::delivery::client::{
    ClientOptions, Connection, Hop, HopFailure, Outcome, Protocol, RecipientOutcome, Stage, Timeouts, TlsPolicy,
    Transaction, default_roots, pem_roots,
};
use mailflow_events::delivery::QueuedRecipient;
use mailflow_events::received::{BodyType, DsnNotify, DsnReturn};
use mailflow_tests::dovecot::Dovecot;
use mailflow_tests::postfix::{PrivatePostfix, SmtpSink};
use mailflow_tests::sink::{self, Fault, Script, Sink};

const MESSAGE: &[u8] =
    b"From: anna@contoso.test\r\nTo: bob@fabrikam.test\r\nSubject: delivery client test\r\n\r\nHello Bob.\r\n";

fn options(protocol: Protocol) -> ClientOptions {
    ClientOptions {
        protocol,
        helo_name: "mailflow.test".into(),
        tls: TlsPolicy::Opportunistic,
        roots: default_roots(),
        timeouts: Timeouts::all(Duration::from_secs(20)),
    }
}

fn hop(addr: SocketAddr) -> Hop {
    Hop { host: "localhost".into(), addr }
}

fn recipients(addresses: &[&str]) -> Vec<QueuedRecipient> {
    addresses.iter().map(|a| QueuedRecipient { address: a.to_string(), notify: vec![], orcpt: None }).collect()
}

fn transaction(recipients: &[QueuedRecipient]) -> Transaction<'_> {
    Transaction {
        mail_from: "anna@contoso.test",
        recipients,
        dsn_return: None,
        dsn_envid: None,
        body: BodyType::SevenBit,
        smtputf8: false,
    }
}

/// Asserts one outcome: the recipient, what became of it, the reply code and the enhanced status code.
#[track_caller]
fn assert_outcome(outcome: &RecipientOutcome, address: &str, expected: Outcome, code: u16, enhanced: &str) {
    assert_eq!(outcome.address, address);
    assert_eq!(outcome.outcome, expected, "{outcome:?}");
    assert_eq!(outcome.reply.code, code, "{outcome:?}");
    assert_eq!(outcome.reply.enhanced.as_deref(), Some(enhanced), "{outcome:?}");
}

#[track_caller]
fn assert_hop_failure(failure: &HopFailure, stage: Stage, permanent: bool, error_starts: &str) {
    assert_eq!(failure.stage, stage, "{failure:?}");
    assert_eq!(failure.permanent, permanent, "{failure:?}");
    assert!(failure.error.starts_with(error_starts), "{failure:?} does not start with {error_starts:?}");
}

async fn open(addr: SocketAddr) -> Connection {
    Connection::open(&hop(addr), &options(Protocol::Smtp)).await.expect("open")
}

async fn open_sink(script: Script) -> (Sink, Connection) {
    let sink = Sink::start(script).await.expect("sink");
    let connection = open(sink.address).await;
    (sink, connection)
}

async fn open_failure(addr: SocketAddr, options: &ClientOptions) -> HopFailure {
    Connection::open(&hop(addr), options).await.expect_err("the hop was accepted")
}

// ---------------------------------------------------------------- smtp-sink

#[tokio::test]
async fn smtp_sink_accepts_a_message_for_every_recipient_with_pipelining() {
    let peer = SmtpSink::start(&[]).expect("smtp-sink");
    let mut connection = open(peer.address).await;
    assert!(connection.capabilities().pipelining, "smtp-sink offers PIPELINING");
    assert_eq!(connection.tls(), None, "smtp-sink has no STARTTLS");
    let rcpts = recipients(&["bob@fabrikam.test", "carol@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_eq!(outcomes.len(), 2);
    assert_outcome(&outcomes[0], "bob@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    assert_outcome(&outcomes[1], "carol@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    connection.quit().await;

    let dumped = peer.wait_for_dumps(1).expect("dump");
    assert_eq!(dumped.len(), 1);
    assert_eq!(dumped[0].mail_args, "<anna@contoso.test>");
    assert_eq!(dumped[0].rcpt_args, ["<bob@fabrikam.test>", "<carol@fabrikam.test>"]);
    assert!(dumped[0].message.contains("Subject: delivery client test\n"), "{}", dumped[0].message);
    assert!(dumped[0].message.contains("\nHello Bob.\n"), "{}", dumped[0].message);
}

#[tokio::test]
async fn one_connection_to_smtp_sink_carries_several_transactions() {
    let peer = SmtpSink::start(&[]).expect("smtp-sink");
    let mut connection = open(peer.address).await;
    for n in 0..3 {
        let rcpts = recipients(&[&format!("user{n}@fabrikam.test")]);
        let content = format!("Subject: message {n}\r\n\r\nbody {n}\r\n");
        let outcomes = connection.send(&transaction(&rcpts), content.as_bytes()).await.expect("send");
        assert_outcome(&outcomes[0], &format!("user{n}@fabrikam.test"), Outcome::Delivered, 250, "2.0.0");
        assert!(connection.is_usable());
    }
    connection.quit().await;
    let mut rcpts: Vec<String> = peer.wait_for_dumps(3).expect("dumps").into_iter().flat_map(|d| d.rcpt_args).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["<user0@fabrikam.test>", "<user1@fabrikam.test>", "<user2@fabrikam.test>"]);
}

#[tokio::test]
async fn dsn_and_body_parameters_reach_smtp_sink() {
    let peer = SmtpSink::start(&[]).expect("smtp-sink");
    let mut connection = open(peer.address).await;
    assert!(connection.capabilities().dsn && connection.capabilities().eight_bit_mime);
    let rcpts = vec![QueuedRecipient {
        address: "bob@fabrikam.test".into(),
        notify: vec![DsnNotify::Success, DsnNotify::Failure],
        orcpt: Some("rfc822;bob@fabrikam.test".into()),
    }];
    let tx = Transaction {
        dsn_return: Some(DsnReturn::Headers),
        dsn_envid: Some("env 42"),
        body: BodyType::EightBitMime,
        ..transaction(&rcpts)
    };
    let outcomes = connection.send(&tx, "Subject: caf\u{e9}\r\n\r\n8-bit \u{e9}\r\n".as_bytes()).await.expect("send");
    assert_outcome(&outcomes[0], "bob@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    let dumped = peer.wait_for_dumps(1).expect("dump");
    assert_eq!(dumped[0].mail_args, "<anna@contoso.test> BODY=8BITMIME RET=HDRS ENVID=env+2042");
    assert_eq!(dumped[0].rcpt_args, ["<bob@fabrikam.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@fabrikam.test"]);
}

#[tokio::test]
async fn smtp_sink_soft_rejecting_rcpt_defers_every_recipient_and_sends_no_data() {
    let peer = SmtpSink::start(&["-r", "RCPT"]).expect("smtp-sink");
    let mut connection = open(peer.address).await;
    let rcpts = recipients(&["bob@fabrikam.test", "carol@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "bob@fabrikam.test", Outcome::Deferred, 450, "4.3.0");
    assert_outcome(&outcomes[1], "carol@fabrikam.test", Outcome::Deferred, 450, "4.3.0");
    assert!(connection.is_usable(), "RSET after the refusals leaves the session usable");
    connection.quit().await;
    assert!(peer.dumped().expect("dumps").is_empty(), "a transaction without recipients was dumped");
}

#[tokio::test]
async fn smtp_sink_hard_rejecting_mail_fails_every_recipient() {
    let peer = SmtpSink::start(&["-f", "MAIL"]).expect("smtp-sink");
    let mut connection = open(peer.address).await;
    let rcpts = recipients(&["bob@fabrikam.test", "carol@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "bob@fabrikam.test", Outcome::Failed, 500, "5.3.0");
    assert_outcome(&outcomes[1], "carol@fabrikam.test", Outcome::Failed, 500, "5.3.0");
}

// ---------------------------------------------------------------- Dovecot LMTP

#[tokio::test]
async fn dovecot_lmtp_answers_per_recipient_and_the_message_lands_in_the_maildir() {
    let dovecot = Dovecot::start(&["anna@contoso.test", "bob@contoso.test"]).expect("dovecot");
    let mut connection = Connection::open(&hop(dovecot.address), &options(Protocol::Lmtp)).await.expect("open");
    let rcpts = recipients(&["anna@contoso.test", "nobody@contoso.test", "bob@contoso.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "anna@contoso.test", Outcome::Delivered, 250, "2.0.0");
    assert_outcome(&outcomes[1], "nobody@contoso.test", Outcome::Failed, 550, "5.1.1");
    assert_outcome(&outcomes[2], "bob@contoso.test", Outcome::Delivered, 250, "2.0.0");
    assert!(outcomes[0].reply.text.contains("<anna@contoso.test>"), "LMTP reply for anna: {:?}", outcomes[0].reply);
    assert!(outcomes[2].reply.text.contains("<bob@contoso.test>"), "LMTP reply for bob: {:?}", outcomes[2].reply);

    // A second transaction on the same connection.
    let only_anna = recipients(&["anna@contoso.test"]);
    let outcomes = connection.send(&transaction(&only_anna), b"Subject: second\r\n\r\nagain\r\n").await.expect("send");
    assert_outcome(&outcomes[0], "anna@contoso.test", Outcome::Delivered, 250, "2.0.0");
    connection.quit().await;

    let anna = dovecot.new_messages("anna@contoso.test").expect("anna's maildir");
    assert_eq!(anna.len(), 2, "anna's new/: {anna:?}");
    let texts: Vec<String> = anna.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    assert!(texts.iter().any(|t| t.contains("Subject: delivery client test") && t.contains("Hello Bob.")));
    assert!(texts.iter().any(|t| t.contains("Subject: second")));
    let bob = dovecot.new_messages("bob@contoso.test").expect("bob's maildir");
    assert_eq!(bob.len(), 1);
    assert!(!dovecot.maildir("nobody@contoso.test").exists());
}

#[tokio::test]
async fn dovecot_lmtp_with_no_known_recipient_gets_no_data() {
    let dovecot = Dovecot::start(&["anna@contoso.test"]).expect("dovecot");
    let mut connection = Connection::open(&hop(dovecot.address), &options(Protocol::Lmtp)).await.expect("open");
    let rcpts = recipients(&["ghost@contoso.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "ghost@contoso.test", Outcome::Failed, 550, "5.1.1");
    assert!(connection.is_usable());
    let rcpts = recipients(&["anna@contoso.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send after RSET");
    assert_outcome(&outcomes[0], "anna@contoso.test", Outcome::Delivered, 250, "2.0.0");
    assert_eq!(dovecot.new_messages("anna@contoso.test").expect("maildir").len(), 1);
}

// ---------------------------------------------------------------- scriptable sink: extensions

#[tokio::test]
async fn mail_and_every_rcpt_go_in_one_write_when_the_peer_offers_pipelining() {
    let (sink, mut connection) = open_sink(Script::smtp()).await;
    let rcpts = recipients(&["a@fabrikam.test", "b@fabrikam.test", "c@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert!(outcomes.iter().all(|o| o.outcome == Outcome::Delivered && o.reply.code == 250));
    let commands = sink.commands();
    let batch: Vec<(String, bool)> = commands
        .iter()
        .filter(|c| c.line.starts_with("MAIL") || c.line.starts_with("RCPT"))
        .map(|c| (c.line.clone(), c.pipelined))
        .collect();
    assert_eq!(
        batch,
        [
            (format!("MAIL FROM:<anna@contoso.test> SIZE={}", MESSAGE.len()), true),
            ("RCPT TO:<a@fabrikam.test>".to_string(), true),
            ("RCPT TO:<b@fabrikam.test>".to_string(), true),
            ("RCPT TO:<c@fabrikam.test>".to_string(), false),
        ]
    );
}

#[tokio::test]
async fn without_pipelining_each_command_waits_for_its_reply() {
    let (sink, mut connection) = open_sink(Script::smtp().extensions(&["8BITMIME"])).await;
    let rcpts = recipients(&["a@fabrikam.test", "b@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[1], "b@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    assert!(sink.commands().iter().all(|c| !c.pipelined), "{:?}", sink.commands());
    assert!(sink.command_lines().contains(&"MAIL FROM:<anna@contoso.test>".to_string()), "no SIZE= without SIZE");
}

#[tokio::test]
async fn content_is_dot_stuffed_and_arrives_unchanged() {
    let (sink, mut connection) = open_sink(Script::smtp()).await;
    let content = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast line without CRLF";
    let rcpts = recipients(&["a@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), content).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    let mut expected = content.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(String::from_utf8_lossy(&received[0].content), String::from_utf8_lossy(&expected));
}

#[tokio::test]
async fn a_message_larger_than_the_peers_size_fails_without_being_sent() {
    let (sink, mut connection) = open_sink(Script::smtp().extensions(&["PIPELINING", "SIZE 50"])).await;
    let rcpts = recipients(&["a@fabrikam.test", "b@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Failed, 552, "5.3.4");
    assert_outcome(&outcomes[1], "b@fabrikam.test", Outcome::Failed, 552, "5.3.4");
    assert_eq!(outcomes[0].reply.text, "Message too big for system");
    assert!(!sink.command_lines().iter().any(|l| l.starts_with("MAIL")), "{:?}", sink.command_lines());
    assert!(connection.is_usable());
}

#[tokio::test]
async fn eight_bit_and_utf8_messages_fail_at_a_peer_without_the_extensions() {
    let (sink, mut connection) = open_sink(Script::smtp().extensions(&["PIPELINING"])).await;
    let rcpts = recipients(&["a@fabrikam.test"]);
    let eight_bit = Transaction { body: BodyType::EightBitMime, ..transaction(&rcpts) };
    let outcomes = connection.send(&eight_bit, MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Failed, 554, "5.6.3");
    let utf8 = Transaction { smtputf8: true, ..transaction(&rcpts) };
    let outcomes = connection.send(&utf8, MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Failed, 553, "5.6.7");
    assert!(!sink.command_lines().iter().any(|l| l.starts_with("MAIL")));

    let (sink, mut connection) = open_sink(Script::smtp().extensions(&["8BITMIME", "SMTPUTF8"])).await;
    let both = Transaction { body: BodyType::EightBitMime, smtputf8: true, ..transaction(&rcpts) };
    let outcomes = connection.send(&both, MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    assert_eq!(sink.received()[0].mail, "<anna@contoso.test> BODY=8BITMIME SMTPUTF8");
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo_without_extensions() {
    let (sink, mut connection) =
        open_sink(Script::smtp().ehlo("502 5.5.2 Error: command not recognized").helo("250 sink.test")).await;
    assert_eq!(connection.capabilities(), &Default::default());
    let rcpts = recipients(&["a@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    let lines = sink.command_lines();
    assert_eq!(&lines[..3], ["EHLO mailflow.test", "HELO mailflow.test", "MAIL FROM:<anna@contoso.test>"]);
}

// ---------------------------------------------------------------- scriptable sink: replies

#[tokio::test]
async fn rcpt_replies_decide_each_recipient_and_only_accepted_ones_get_the_message() {
    let script = Script::smtp()
        .rcpt("later@fabrikam.test", "451 4.2.0 Mailbox busy, try later")
        .rcpt("gone@fabrikam.test", "550 5.1.1 Bad destination mailbox address");
    let (sink, mut connection) = open_sink(script).await;
    let rcpts = recipients(&["ok@fabrikam.test", "later@fabrikam.test", "gone@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "ok@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    assert_outcome(&outcomes[1], "later@fabrikam.test", Outcome::Deferred, 451, "4.2.0");
    assert_outcome(&outcomes[2], "gone@fabrikam.test", Outcome::Failed, 550, "5.1.1");
    assert_eq!(outcomes[2].reply.text, "Bad destination mailbox address");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpts, ["<ok@fabrikam.test>"]);
}

#[tokio::test]
async fn no_accepted_recipient_means_rset_and_no_data_and_the_connection_is_reused() {
    let script = Script::smtp().rcpt("gone@fabrikam.test", "550 5.1.1 Bad destination mailbox address");
    let (sink, mut connection) = open_sink(script).await;
    let gone = recipients(&["gone@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&gone), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "gone@fabrikam.test", Outcome::Failed, 550, "5.1.1");
    let ok = recipients(&["ok@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&ok), MESSAGE).await.expect("second send");
    assert_outcome(&outcomes[0], "ok@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    let verbs: Vec<String> =
        sink.command_lines().iter().map(|l| l.split([' ', ':']).next().unwrap_or_default().to_string()).collect();
    assert_eq!(verbs, ["EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "DATA"]);
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn a_5xx_to_mail_fails_every_recipient_and_keeps_the_session() {
    let (sink, mut connection) = open_sink(Script::smtp().mail("550 5.7.1 Sender rejected")).await;
    let rcpts = recipients(&["a@fabrikam.test", "b@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Failed, 550, "5.7.1");
    assert_outcome(&outcomes[1], "b@fabrikam.test", Outcome::Failed, 550, "5.7.1");
    assert!(connection.is_usable(), "the pipelined RCPT replies were read");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_4xx_to_mail_is_a_temporary_hop_failure() {
    let (_sink, mut connection) = open_sink(Script::smtp().mail("451 4.3.0 Queue file write error")).await;
    let rcpts = recipients(&["a@fabrikam.test"]);
    let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
    assert_hop_failure(&failure, Stage::Mail, false, "451 4.3.0 Queue file write error");
    let reply = failure.reply.expect("reply");
    assert_eq!((reply.code, reply.enhanced.as_deref()), (451, Some("4.3.0")));
    assert!(!connection.is_usable());
}

#[tokio::test]
async fn a_421_to_rcpt_is_a_temporary_hop_failure() {
    let script = Script::smtp().rcpt("b@fabrikam.test", "421 4.7.0 Too many errors, closing");
    let (_sink, mut connection) = open_sink(script).await;
    let rcpts = recipients(&["a@fabrikam.test", "b@fabrikam.test"]);
    let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
    assert_hop_failure(&failure, Stage::Rcpt, false, "421 4.7.0");
    assert_eq!(failure.reply.as_ref().map(|r| r.enhanced.as_deref()), Some(Some("4.7.0")));
}

#[tokio::test]
async fn replies_to_data_and_to_the_end_of_data_decide_the_accepted_recipients() {
    let cases = [
        (Script::smtp().data("554 5.5.1 No valid recipients"), Outcome::Failed, 554, "5.5.1"),
        (Script::smtp().data("451 4.3.0 Try again later"), Outcome::Deferred, 451, "4.3.0"),
        (Script::smtp().end_of_data("552 5.3.4 Message too big"), Outcome::Failed, 552, "5.3.4"),
        (Script::smtp().end_of_data("452 4.3.1 Insufficient system storage"), Outcome::Deferred, 452, "4.3.1"),
    ];
    for (script, expected, code, enhanced) in cases {
        let (_sink, mut connection) = open_sink(script.rcpt("no@fabrikam.test", "550 5.1.1 Unknown")).await;
        let rcpts = recipients(&["a@fabrikam.test", "no@fabrikam.test", "b@fabrikam.test"]);
        let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
        assert_outcome(&outcomes[0], "a@fabrikam.test", expected, code, enhanced);
        assert_outcome(&outcomes[1], "no@fabrikam.test", Outcome::Failed, 550, "5.1.1");
        assert_outcome(&outcomes[2], "b@fabrikam.test", expected, code, enhanced);
        assert!(connection.is_usable());
    }
}

#[tokio::test]
async fn a_multi_line_reply_is_recorded_whole() {
    let script = Script::smtp().end_of_data("250-2.0.0 Ok: queued as 4FzX\r\n250 2.0.0 see you");
    let (_sink, mut connection) = open_sink(script).await;
    let rcpts = recipients(&["a@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    assert_eq!(outcomes[0].reply.text, "Ok: queued as 4FzX\nsee you");
}

// ---------------------------------------------------------------- scriptable sink: the session

#[tokio::test]
async fn greeting_refusals_are_permanent_for_5xx_and_temporary_for_4xx() {
    let sink = Sink::start(Script::smtp().greeting("554 5.7.1 No SMTP service here")).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Greeting, true, "554 5.7.1 No SMTP service here");
    let sink = Sink::start(Script::smtp().greeting("421 4.3.2 Service not available")).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Greeting, false, "421 4.3.2");
}

#[tokio::test]
async fn ehlo_and_helo_both_refused_is_permanent() {
    let script = Script::smtp().ehlo("550 5.7.1 Go away").helo("550 5.7.1 Still no");
    let sink = Sink::start(script).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Ehlo, true, "550 5.7.1 Still no");
    let sink = Sink::start(Script::smtp().ehlo("450 4.7.1 Slow down")).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Ehlo, false, "450 4.7.1");
}

#[tokio::test]
async fn a_refused_connection_is_a_temporary_hop_failure() {
    let addr = Sink::closed_port().expect("port");
    let failure = open_failure(addr, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Connect, false, "4.4.316 Connection refused");
    assert_eq!(failure.reply, None);
}

#[tokio::test]
async fn a_peer_that_hangs_fails_within_the_stage_timeout() {
    for stage in [sink::Stage::Greeting, sink::Stage::Ehlo] {
        let sink = Sink::start(Script::smtp().fault(stage, Fault::Hang)).await.expect("sink");
        let mut opts = options(Protocol::Smtp);
        opts.timeouts = Timeouts::all(Duration::from_millis(300));
        let started = Instant::now();
        let failure = open_failure(sink.address, &opts).await;
        let expected = if stage == sink::Stage::Greeting { Stage::Greeting } else { Stage::Ehlo };
        assert_hop_failure(&failure, expected, false, "4.4.315 Connection timed out");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
    for (stage, expected) in [
        (sink::Stage::Mail, Stage::Mail),
        (sink::Stage::Rcpt, Stage::Rcpt),
        (sink::Stage::Data, Stage::Data),
        (sink::Stage::EndOfData, Stage::EndOfData),
    ] {
        let sink = Sink::start(Script::smtp().fault(stage, Fault::Hang)).await.expect("sink");
        let opts = ClientOptions { timeouts: Timeouts::all(Duration::from_millis(300)), ..options(Protocol::Smtp) };
        let mut connection = Connection::open(&hop(sink.address), &opts).await.expect("open");
        let rcpts = recipients(&["a@fabrikam.test"]);
        let started = Instant::now();
        let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
        assert_hop_failure(&failure, expected, false, "4.4.315 Connection timed out");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(!connection.is_usable());
    }
}

#[tokio::test]
async fn a_connection_lost_after_the_final_dot_is_temporary_and_says_the_message_may_be_delivered() {
    let (sink, mut connection) = open_sink(Script::smtp().fault(sink::Stage::EndOfData, Fault::Drop)).await;
    let rcpts = recipients(&["a@fabrikam.test"]);
    let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
    assert_hop_failure(&failure, Stage::EndOfData, false, "4.4.2 Connection dropped after the end of data");
    assert!(failure.error.contains("may have been delivered"), "{failure:?}");
    assert_eq!(sink.received().len(), 1, "the sink had the whole message");
    let again = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("unusable");
    assert_hop_failure(&again, Stage::Mail, false, "4.4.2 Connection dropped");
}

#[tokio::test]
async fn a_connection_dropped_before_a_reply_is_a_temporary_hop_failure() {
    let sink = Sink::start(Script::smtp().fault(sink::Stage::Ehlo, Fault::Drop)).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Ehlo, false, "4.4.2 Connection dropped");
    let (_sink, mut connection) = open_sink(Script::smtp().fault(sink::Stage::Mail, Fault::Drop)).await;
    let rcpts = recipients(&["a@fabrikam.test"]);
    let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
    assert_hop_failure(&failure, Stage::Mail, false, "4.4.2 Connection dropped");
}

#[tokio::test]
async fn garbage_from_the_peer_is_a_temporary_hop_failure() {
    let long = format!("220 {}", "x".repeat(10_000));
    for greeting in ["hello there", "22", "220-continued\r\n354 different code", long.as_str()] {
        let sink = Sink::start(Script::smtp().greeting(greeting)).await.expect("sink");
        let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
        assert_hop_failure(&failure, Stage::Greeting, false, "4.5.0 Invalid reply from remote server");
    }
    let many_lines = vec!["250-x"; 500].join("\r\n") + "\r\n250 end";
    let sink = Sink::start(Script::smtp().ehlo(&many_lines)).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::Ehlo, false, "4.5.0 Invalid reply from remote server");
    let (_sink, mut connection) = open_sink(Script::smtp().data("250 2.0.0 not what DATA expects")).await;
    let rcpts = recipients(&["a@fabrikam.test"]);
    let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
    assert_hop_failure(&failure, Stage::Data, false, "4.5.0 Invalid reply from remote server");
}

#[tokio::test]
async fn required_tls_at_a_peer_without_starttls_is_a_temporary_hop_failure() {
    let sink = Sink::start(Script::smtp()).await.expect("sink");
    for policy in [
        TlsPolicy::EncryptionOnly,
        TlsPolicy::CertificateValidation,
        TlsPolicy::DomainValidation { tls_domain: "*.fabrikam.test".into() },
    ] {
        let opts = ClientOptions { tls: policy.clone(), ..options(Protocol::Smtp) };
        let failure = open_failure(sink.address, &opts).await;
        assert_hop_failure(&failure, Stage::StartTls, false, "4.7.10 TLS required but not available");
    }
    let refused = Sink::start(Script::smtp().extensions(&["STARTTLS"])).await.expect("sink");
    // The sink answers 502 to STARTTLS by default: opportunistic goes on in clear text, required TLS fails.
    let mut connection = open(refused.address).await;
    assert_eq!(connection.tls(), None);
    let rcpts = recipients(&["a@fabrikam.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "a@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
    let opts = ClientOptions { tls: TlsPolicy::EncryptionOnly, ..options(Protocol::Smtp) };
    let failure = open_failure(refused.address, &opts).await;
    assert_hop_failure(&failure, Stage::StartTls, false, "4.7.10 TLS required but not available");
    assert_eq!(failure.reply.map(|r| r.code), Some(502));
}

#[tokio::test]
async fn a_failed_tls_handshake_fails_the_hop_even_when_tls_is_opportunistic() {
    let script = Script::smtp().extensions(&["PIPELINING", "STARTTLS"]).starttls("220 2.0.0 Ready to start TLS");
    let sink = Sink::start(script).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::StartTls, false, "4.7.5 TLS negotiation failed");
    // Clear text sent together with the 220 would be read as if it came over
    // TLS (the STARTTLS injection of CVE-2011-0411, seen from the client).
    let injecting = Script::smtp().extensions(&["STARTTLS"]).starttls("220 2.0.0 Ready\r\n250 injected");
    let sink = Sink::start(injecting).await.expect("sink");
    let failure = open_failure(sink.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::StartTls, false, "4.5.0 Invalid reply from remote server");
    assert!(failure.error.contains("after the reply to STARTTLS"), "{failure:?}");
    let refused = Sink::start(Script::smtp().extensions(&["STARTTLS"]).starttls("454 4.7.0 TLS not available"))
        .await
        .expect("sink");
    let failure = open_failure(refused.address, &options(Protocol::Smtp)).await;
    assert_hop_failure(&failure, Stage::StartTls, false, "454 4.7.0 TLS not available");
}

// ---------------------------------------------------------------- scriptable sink: LMTP

#[tokio::test]
async fn lmtp_gives_each_accepted_recipient_its_own_end_of_data_reply() {
    let script = Script::lmtp()
        .rcpt("unknown@contoso.test", "550 5.1.1 User unknown")
        .lmtp_reply("full@contoso.test", "452 4.2.2 Mailbox full")
        .lmtp_reply("bad@contoso.test", "552 5.2.3 Message too large for mailbox")
        .end_of_data("250 2.0.0 Saved");
    let sink = Sink::start(script).await.expect("sink");
    let mut connection = Connection::open(&hop(sink.address), &options(Protocol::Lmtp)).await.expect("open");
    let rcpts = recipients(&["ok@contoso.test", "unknown@contoso.test", "full@contoso.test", "bad@contoso.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
    assert_outcome(&outcomes[0], "ok@contoso.test", Outcome::Delivered, 250, "2.0.0");
    assert_outcome(&outcomes[1], "unknown@contoso.test", Outcome::Failed, 550, "5.1.1");
    assert_outcome(&outcomes[2], "full@contoso.test", Outcome::Deferred, 452, "4.2.2");
    assert_outcome(&outcomes[3], "bad@contoso.test", Outcome::Failed, 552, "5.2.3");
    assert_eq!(sink.command_lines()[0], "LHLO mailflow.test");
    assert!(connection.is_usable());
}

#[tokio::test]
async fn lmtp_connection_lost_after_the_end_of_data_keeps_the_replies_received_and_defers_the_rest() {
    let sink = Sink::start(Script::lmtp().lmtp_drop_at("second@contoso.test")).await.expect("sink");
    let mut connection = Connection::open(&hop(sink.address), &options(Protocol::Lmtp)).await.expect("open");
    let rcpts = recipients(&["first@contoso.test", "second@contoso.test", "third@contoso.test"]);
    let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("partial outcomes");
    assert_outcome(&outcomes[0], "first@contoso.test", Outcome::Delivered, 250, "2.0.0");
    assert_outcome(&outcomes[1], "second@contoso.test", Outcome::Deferred, 451, "4.4.2");
    assert_outcome(&outcomes[2], "third@contoso.test", Outcome::Deferred, 451, "4.4.2");
    assert!(outcomes[1].reply.text.contains("may have been delivered"), "{:?}", outcomes[1].reply);
    assert!(!connection.is_usable());

    // Lost before the first reply: nothing is known, the whole hop failed.
    let sink = Sink::start(Script::lmtp().lmtp_drop_at("first@contoso.test")).await.expect("sink");
    let mut connection = Connection::open(&hop(sink.address), &options(Protocol::Lmtp)).await.expect("open");
    let failure = connection.send(&transaction(&rcpts), MESSAGE).await.expect_err("hop failure");
    assert_hop_failure(&failure, Stage::EndOfData, false, "4.4.2 Connection dropped after the end of data");
    assert_eq!(sink.received().len(), 1);
}

// ---------------------------------------------------------------- Postfix with STARTTLS

/// A private CA and a server certificate for `mx.fabrikam.test`, written to
/// `dir`: returns (server chain PEM, server key PEM, CA file).
fn certificates(dir: &std::path::Path) -> anyhow::Result<(String, String, std::path::PathBuf)> {
    let ca = mailflow_tests::pki::TestCa::new()?;
    let (chain, key) = ca.issue("mx.fabrikam.test")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    Ok((chain, key, ca_file))
}

#[tokio::test]
async fn starttls_to_postfix_encrypts_and_checks_the_certificate_as_the_policy_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, key, ca_file) = certificates(dir.path()).expect("certificates");
    let postfix = PrivatePostfix::start(&chain, &key, "fabrikam.test").expect("postfix");
    let private_ca = pem_roots(&ca_file).expect("CA file");
    let named = |host: &str| Hop { host: host.into(), addr: postfix.address };
    let with = |tls: TlsPolicy, roots| ClientOptions { tls, roots, ..options(Protocol::Smtp) };

    // Accepted: each policy with a hop and roots that satisfy it; a message goes through encrypted.
    let accepted = [
        (TlsPolicy::Opportunistic, default_roots(), "localhost"),
        (TlsPolicy::EncryptionOnly, default_roots(), "localhost"),
        (TlsPolicy::CertificateValidation, private_ca.clone(), "mx.fabrikam.test"),
        (TlsPolicy::DomainValidation { tls_domain: "*.fabrikam.test".into() }, private_ca.clone(), "localhost"),
        (TlsPolicy::DomainValidation { tls_domain: "MX.fabrikam.test".into() }, private_ca.clone(), "127.0.0.1"),
    ];
    for (policy, roots, host) in accepted {
        let mut connection = Connection::open(&named(host), &with(policy.clone(), roots))
            .await
            .unwrap_or_else(|f| panic!("{policy:?}: {f}"));
        let (protocol, cipher) = connection.tls().unwrap_or_else(|| panic!("{policy:?}: not encrypted"));
        assert!(protocol == "TLSv1.3" || protocol == "TLSv1.2", "{protocol}");
        assert!(!cipher.is_empty() && cipher != "unknown");
        assert!(!connection.capabilities().starttls, "the EHLO after STARTTLS does not offer it again");
        let rcpts = recipients(&["bob@fabrikam.test"]);
        let outcomes = connection.send(&transaction(&rcpts), MESSAGE).await.expect("send");
        assert_outcome(&outcomes[0], "bob@fabrikam.test", Outcome::Delivered, 250, "2.0.0");
        assert!(outcomes[0].reply.text.starts_with("Ok: queued as "), "{:?}", outcomes[0].reply);
        connection.quit().await;
    }

    // Refused: a certificate check fails; the hop failure is temporary (spec 6.4).
    let refused = [
        (TlsPolicy::CertificateValidation, default_roots(), "mx.fabrikam.test"),
        (TlsPolicy::CertificateValidation, private_ca.clone(), "localhost"),
        (TlsPolicy::DomainValidation { tls_domain: "*.contoso.test".into() }, private_ca.clone(), "mx.fabrikam.test"),
        (TlsPolicy::DomainValidation { tls_domain: "fabrikam.test".into() }, private_ca.clone(), "mx.fabrikam.test"),
        (TlsPolicy::DomainValidation { tls_domain: "*.fabrikam.test".into() }, default_roots(), "mx.fabrikam.test"),
    ];
    for (policy, roots, host) in refused {
        let failure = Connection::open(&named(host), &with(policy.clone(), roots)).await.expect_err("accepted");
        assert_hop_failure(&failure, Stage::StartTls, false, "4.7.5 TLS negotiation failed");
        assert_eq!(failure.reply, None, "{policy:?}");
    }
    // Postfix hands the messages to its discard transport after the 250: poll its log.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = postfix.log();
    while log.matches("status=sent").count() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = postfix.log();
    }
    assert!(log.contains("TLS connection established from"), "{log}");
    assert_eq!(log.matches("status=sent").count(), 5, "{log}");
}
