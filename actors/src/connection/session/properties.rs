//! Property tests of the protocol core: whatever bytes arrive, in whatever
//! pieces, the session answers with well-formed replies, never panics, keeps
//! its buffer bounded, and never stores content holding a bare CR or LF.

use std::sync::Arc;

use proptest::prelude::*;

use super::{Peer, Session, SessionConfig, Step, StoreOutcome};
use crate::config::{Config, ListenerKind};
use crate::policy::InboundPolicy;

fn session() -> Session {
    let config = Config::builtin();
    let session_config = Arc::new(SessionConfig::new(&config.server, "prop", ListenerKind::Smtp));
    let peer = Peer { addr: "198.51.100.1:2000".parse().expect("addr"), local: None, ptr: None };
    Session::new(session_config, Arc::new(InboundPolicy::new(&config)), peer).0
}

/// Feeds `chunks`, completing every effect; returns rendered replies and stored contents.
fn drive(chunks: &[Vec<u8>]) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut session = session();
    let mut input = Vec::new();
    let mut replies = Vec::new();
    let mut stored = Vec::new();
    for chunk in chunks {
        input.extend_from_slice(chunk);
        let mut steps = session.feed(&mut input);
        while !steps.is_empty() {
            let mut next = Vec::new();
            for step in steps {
                match step {
                    Step::Reply(reply) => replies.push(reply.render()),
                    Step::Store(incoming) => {
                        stored.push(incoming.content);
                        next.extend(session.stored(StoreOutcome::Stored));
                    }
                    Step::CheckPassword { .. } => next.extend(session.password_checked(None)),
                    Step::StartTls => next.extend(session.tls_started(None)),
                    Step::Record(_) | Step::Close => {}
                }
            }
            steps = next;
        }
        if session.is_closed() {
            break;
        }
        // An incomplete command never grows past the line limit.
        assert!(session.in_data() || input.len() <= 2048, "buffer grew to {}", input.len());
    }
    (replies, stored)
}

fn well_formed(reply: &str) -> bool {
    reply.ends_with("\r\n")
        && reply.split("\r\n").filter(|l| !l.is_empty()).all(|line| {
            line.len() >= 4 && line[..3].bytes().all(|b| b.is_ascii_digit()) && matches!(&line[3..4], " " | "-")
        })
}

/// Plausible command lines, mutated: the parser sees mostly near-valid input.
fn command() -> impl Strategy<Value = Vec<u8>> {
    let verbs = prop::sample::select(vec![
        "EHLO x",
        "HELO x",
        "MAIL FROM:<a@example.net>",
        "MAIL FROM:<>",
        "RCPT TO:<alice@example.com>",
        "RCPT TO:<x@y>",
        "DATA",
        "BDAT 3",
        "BDAT 0 LAST",
        "RSET",
        "NOOP",
        "VRFY a",
        "HELP",
        "STARTTLS",
        "AUTH PLAIN",
        "MAIL FROM:<a@b> SIZE=99999999999999999999",
        "RCPT TO:<\"q\"@[127.0.0.1]>",
    ]);
    (verbs, prop::collection::vec(any::<u8>(), 0..8), prop::bool::ANY).prop_map(|(verb, junk, terminate)| {
        let mut line = verb.as_bytes().to_vec();
        line.extend(junk);
        if terminate {
            line.extend_from_slice(b"\r\n");
        }
        line
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_get_well_formed_replies_and_no_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let (replies, _) = drive(&chunks);
        for reply in &replies {
            prop_assert!(well_formed(reply), "malformed reply {reply:?}");
        }
    }

    #[test]
    fn mutated_command_streams_never_panic(commands in prop::collection::vec(command(), 0..40), split in 1usize..64) {
        let stream: Vec<u8> = commands.concat();
        let chunks: Vec<Vec<u8>> = stream.chunks(split).map(<[u8]>::to_vec).collect();
        let (replies, _) = drive(&chunks);
        for reply in &replies {
            prop_assert!(well_formed(reply), "malformed reply {reply:?}");
        }
    }

    #[test]
    fn stored_content_never_holds_a_bare_cr_or_lf(body in prop::collection::vec(prop::sample::select(vec![b'a', b'.', b'\r', b'\n', 0u8]), 0..200), split in 1usize..32) {
        let mut stream = b"EHLO x\r\n".to_vec();
        // MAIL, RCPT and DATA each wait for their reply, as a client without PIPELINING does.
        let mut chunks = vec![stream.clone()];
        for command in [&b"MAIL FROM:<a@example.net>\r\n"[..], b"RCPT TO:<bob@example.com>\r\n", b"DATA\r\n"] {
            chunks.push(command.to_vec());
        }
        stream.clear();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(b"\r\n.\r\n");
        chunks.extend(stream.chunks(split).map(<[u8]>::to_vec));
        let (_, stored) = drive(&chunks);
        for content in stored {
            prop_assert!(crate::connection::body::check_line_endings(&content).is_ok(), "stored {content:?}");
        }
    }
}
