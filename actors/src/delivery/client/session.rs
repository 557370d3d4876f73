//! Opening a session: connect, greeting, EHLO/LHLO (HELO fallback), STARTTLS
//! per policy and EHLO again over TLS.
//!
//! Replies classify as in DESIGN §3: `421` or another `4xx` anywhere here is a
//! temporary hop failure; `5xx` to the greeting, or to EHLO and then HELO
//! (LMTP has no HELO: to LHLO), is permanent. A `5xx` to STARTTLS under the
//! opportunistic policy continues in clear text (the peer said it cannot do
//! TLS now; RFC 3207 §4 leaves the choice to the client); under a policy that
//! requires TLS it is a temporary failure, like every failure to get TLS
//! (spec 6.4: forced TLS failing is a deferral, then expiry).

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::reply::{Capabilities, RawReply};
use super::wire::{Stream, Wire};
use super::{ClientOptions, Connection, Hop, HopFailure, Protocol, Stage, tls};

pub(super) async fn open(hop: &Hop, options: &ClientOptions) -> Result<Connection, HopFailure> {
    let limits = options.timeouts;
    let tcp = connect(hop, options).await?;
    let mut wire = Wire::new(Stream::Plain(tcp));
    let greeting = wire.read_reply(limits.greeting).await.map_err(|e| HopFailure::wire(Stage::Greeting, e))?;
    if greeting.code != 220 {
        return Err(refused(Stage::Greeting, &greeting));
    }
    let mut capabilities = hello(&mut wire, options).await?;
    let mut tls_info = None;
    if capabilities.starttls {
        wire.write(b"STARTTLS\r\n", limits.data_block).await.map_err(|e| HopFailure::wire(Stage::StartTls, e))?;
        let reply = wire.read_reply(limits.ehlo).await.map_err(|e| HopFailure::wire(Stage::StartTls, e))?;
        if reply.code == 220 {
            let tcp = wire.into_plain().map_err(|e| HopFailure::wire(Stage::StartTls, e))?;
            let tls = handshake(tcp, hop, options).await?;
            tls_info = Some(crate::connection::tls::describe(tls.get_ref().1));
            wire = Wire::new(Stream::Tls(Box::new(tls)));
            capabilities = hello(&mut wire, options).await?;
        } else if reply.is_permanent() && !options.tls.requires_tls() {
            // Opportunistic: the session is still in its initial state.
        } else if reply.is_permanent() {
            return Err(HopFailure {
                stage: Stage::StartTls,
                error: format!("4.7.10 TLS required but not available [STARTTLS refused: {}]", reply.to_reply()),
                reply: Some(reply.to_reply()),
                permanent: false,
            });
        } else {
            return Err(refused(Stage::StartTls, &reply));
        }
    } else if options.tls.requires_tls() {
        return Err(HopFailure::temporary(
            Stage::StartTls,
            "4.7.10 TLS required but not available [the remote server does not offer STARTTLS]".to_string(),
        ));
    }
    Ok(Connection {
        wire,
        hop: hop.clone(),
        options_protocol: options.protocol,
        timeouts: limits,
        greeting: greeting.to_reply(),
        capabilities,
        tls: tls_info,
        usable: true,
    })
}

async fn connect(hop: &Hop, options: &ClientOptions) -> Result<TcpStream, HopFailure> {
    let limit = options.timeouts.connect;
    let addr = hop.addr;
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            // Commands are small and each waits for its reply: no Nagle delay.
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(HopFailure::temporary(Stage::Connect, format!("4.4.316 Connection refused [{addr}: {err}]")))
        }
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
            Err(HopFailure::temporary(Stage::Connect, format!("4.4.315 Connection timed out [{addr}: {err}]")))
        }
        Ok(Err(err)) => Err(HopFailure::temporary(
            Stage::Connect,
            format!("4.4.317 Cannot connect to remote server [{addr}: {err}]"),
        )),
        Err(_) => Err(HopFailure::temporary(
            Stage::Connect,
            format!("4.4.315 Connection timed out [{addr}: no connection within {}s]", limit.as_secs_f64()),
        )),
    }
}

/// EHLO (or LHLO); for SMTP, HELO after a `5xx` to EHLO.
async fn hello(wire: &mut Wire, options: &ClientOptions) -> Result<Capabilities, HopFailure> {
    let verb = match options.protocol {
        Protocol::Smtp => "EHLO",
        Protocol::Lmtp => "LHLO",
    };
    let reply = command(wire, &format!("{verb} {}\r\n", options.helo_name), Stage::Ehlo, options).await?;
    if reply.is_positive() {
        return Ok(Capabilities::from_ehlo(&reply));
    }
    if !(reply.is_permanent() && options.protocol == Protocol::Smtp) {
        return Err(refused(Stage::Ehlo, &reply));
    }
    let reply = command(wire, &format!("HELO {}\r\n", options.helo_name), Stage::Ehlo, options).await?;
    if reply.is_positive() { Ok(Capabilities::default()) } else { Err(refused(Stage::Ehlo, &reply)) }
}

async fn command(wire: &mut Wire, line: &str, stage: Stage, options: &ClientOptions) -> Result<RawReply, HopFailure> {
    let limits = options.timeouts;
    wire.write(line.as_bytes(), limits.data_block).await.map_err(|e| HopFailure::wire(stage, e))?;
    wire.read_reply(limits.ehlo).await.map_err(|e| HopFailure::wire(stage, e))
}

async fn handshake(
    tcp: TcpStream,
    hop: &Hop,
    options: &ClientOptions,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HopFailure> {
    let failed = |detail: String| {
        HopFailure::temporary(Stage::StartTls, format!("4.7.5 TLS negotiation failed [{}: {detail}]", hop.host))
    };
    let config = tls::client_config(&options.tls, &options.roots).map_err(|e| failed(e.to_string()))?;
    let name = tls::server_name(&hop.host, hop.addr.ip());
    let limit = options.timeouts.ehlo;
    match tokio::time::timeout(limit, TlsConnector::from(config).connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(failed(err.to_string())),
        Err(_) => Err(HopFailure::temporary(
            Stage::StartTls,
            format!("4.4.315 Connection timed out [TLS handshake with {} within {}s]", hop.host, limit.as_secs_f64()),
        )),
    }
}

/// A reply that ends the session at `stage`: `5xx` permanent, `4xx` temporary,
/// and anything else (a `3xx` or an unexpected `2xx`) a temporary protocol error.
fn refused(stage: Stage, reply: &RawReply) -> HopFailure {
    let reply = reply.to_reply();
    if (400..600).contains(&reply.code) {
        HopFailure::from_reply(stage, reply)
    } else {
        HopFailure {
            stage,
            error: format!("4.5.0 Invalid reply from remote server [unexpected {reply}]"),
            reply: Some(reply),
            permanent: false,
        }
    }
}
