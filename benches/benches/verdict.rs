//! Verdict throughput (results in `benches/README.md`): authentication
//! (SPF, DKIM, DMARC, ARC, iprev, compauth) and scoring of a 10 KiB message
//! with one Ed25519 DKIM signature, DNS warm (records served by a real DNS
//! server on loopback and cached by the resolver), on one core.
//! Target: ≥ 5,000 messages/s per core.

use std::sync::Arc;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mail_auth::MessageAuthenticator;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use mailflow_actors::verdict::auth::{Arrival, authenticate};
use mailflow_actors::verdict::score::{Signals, has_gtube, score};
use mailflow_tests::dns::DnsServer;

fn verdict(c: &mut Criterion) {
    let pkcs8 = Ed25519Key::generate_pkcs8().expect("key");
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).expect("key");
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
    let zone = format!(
        "bench.example. 300 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         s1._domainkey.bench.example. 300 IN TXT \"v=DKIM1\\; k=ed25519\\; p={public}\"\n\
         _dmarc.bench.example. 300 IN TXT \"v=DMARC1\\; p=reject\"\n"
    );
    let dns = match DnsServer::start(&zone) {
        Ok(dns) => dns,
        Err(err) => {
            eprintln!("verdict benchmark not run: {err}");
            return;
        }
    };
    let mut message = b"From: news@bench.example\r\nTo: alice@contoso.com\r\nSubject: bench\r\n\r\n".to_vec();
    while message.len() < 10 * 1024 {
        message.extend_from_slice(&[b'a'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    let signature = DkimSigner::from_key(key)
        .domain("bench.example")
        .selector("s1")
        .headers(["From", "To", "Subject"])
        .sign(&message)
        .expect("sign");
    let mut content =
        b"Received: from client.example (unknown [127.0.0.1])\r\n\tby mx.bench; Mon, 23 Nov 2026 00:00:00 +0000\r\n"
            .to_vec();
    content.extend_from_slice(signature.to_header().as_bytes());
    content.extend_from_slice(&message);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let config = mailflow_actors::dns::DnsConfig { nameservers: vec![dns.address], ..Default::default() };
    let authenticator = runtime
        .block_on(async { Arc::new(MessageAuthenticator(mailflow_actors::dns::resolver(&config).expect("resolver"))) });
    let arrival = Arrival {
        ip: "127.0.0.1".parse().expect("ip"),
        helo: "client.example",
        hostname: "mx.bench",
        mail_from: "news@bench.example",
        trusted_arc_sealers: &[],
    };
    // Warm the cache, and check that the benchmark measures a passing verdict.
    let warm = runtime.block_on(authenticate(&authenticator, arrival, &content));
    assert_eq!(warm.dkim.first().map(|d| d.result), Some(mailflow_events::verdicts::AuthResult::Pass), "{warm:?}");

    let mut group = c.benchmark_group("verdict");
    group.throughput(Throughput::Elements(1));
    group.bench_function("10KiB_dkim_warm_dns", |b| {
        b.to_async(&runtime).iter(|| async {
            let authentication = authenticate(&authenticator, arrival, &content).await;
            let verdict = score(&Signals {
                ip_allowed: false,
                ip_blocked: false,
                sender_allowed: false,
                sender_blocked: false,
                dnsbl_listed: false,
                gtube: has_gtube(&content),
                phish: Default::default(),
                engine: Default::default(),
                bcl: 0,
                bulk_threshold: 7,
                mark_bulk_as_spam: true,
                authentication: &authentication,
            });
            std::hint::black_box(verdict);
        });
    });
    group.finish();
}

criterion_group!(benches, verdict);
criterion_main!(benches);
