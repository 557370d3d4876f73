//! A small SMTP load generator that measures what smtp-source does not: the
//! latency from the end of DATA (`<CRLF>.<CRLF>` written) to the `250`.
//!
//! Usage: `smtp-latency HOST:PORT SESSIONS MESSAGES_PER_SESSION BODY_BYTES`
//! Each session reuses its connection (MAIL, RCPT, DATA per message). Prints
//! one line: `msgs_per_s=… p50_ms=… p99_ms=… max_ms=… errors=…`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

async fn reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line);
        }
    }
}

async fn session(
    address: String,
    messages: usize,
    body: std::sync::Arc<Vec<u8>>,
) -> std::io::Result<(Vec<Duration>, usize)> {
    let stream = TcpStream::connect(&address).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    reply(&mut reader).await?;
    write.write_all(b"EHLO latency.test\r\n").await?;
    reply(&mut reader).await?;
    let mut latencies = Vec::with_capacity(messages);
    let mut errors = 0;
    for i in 0..messages {
        write
            .write_all(format!("MAIL FROM:<src@source.test>\r\nRCPT TO:<{i}rcpt@bench.test>\r\nDATA\r\n").as_bytes())
            .await?;
        for _ in 0..3 {
            reply(&mut reader).await?;
        }
        write.write_all(&body).await?;
        let sent = Instant::now();
        let answer = reply(&mut reader).await?;
        latencies.push(sent.elapsed());
        if !answer.starts_with("250") {
            errors += 1;
        }
    }
    write.write_all(b"QUIT\r\n").await?;
    Ok((latencies, errors))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, sessions, messages, size] = &args[..] else {
        return Err("usage: smtp-latency HOST:PORT SESSIONS MESSAGES_PER_SESSION BODY_BYTES".into());
    };
    let (sessions, messages, size): (usize, usize, usize) = (sessions.parse()?, messages.parse()?, size.parse()?);
    let mut body = b"From: src@source.test\r\nTo: rcpt@bench.test\r\nSubject: latency\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(&[b'X'; 78]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let body = std::sync::Arc::new(body);
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..sessions).map(|_| tokio::spawn(session(address.clone(), messages, std::sync::Arc::clone(&body)))).collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await??;
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at =
        |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "msgs_per_s={:.1} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={errors}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
