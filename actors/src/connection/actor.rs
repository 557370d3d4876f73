//! The connection actor (one per SMTP session) and the listeners that start them.
//!
//! A listener accepts on its socket, applies the connection limits (refusing
//! with `421 4.7.0` past them, recorded as `ConnectionRefused`), and starts a
//! [`ConnectionActor`] on one of the arbiters, round-robin, so sessions spread
//! over the cores. The actor owns the session: its permit, its socket and the
//! driver future; it stops when the session ends. While the process drains,
//! the listener answers new connections with `421 4.3.2` (see `crate::drain`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::{Actor, ActorContext as _, ActorFutureExt as _, AsyncContext as _, Context, WrapFuture as _};
use actix_rt::ArbiterHandle;
use hickory_resolver::TokioResolver;
use mailflow_events::received::{ConnectionRefused, ReceivedEvent, RejectReason};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use super::accept;
use super::driver::{self, Shared};
use super::limits::{ConnectionLimits, Permit};
use super::reply::Reply;
use super::session::{Peer, Session, SessionConfig};

/// One SMTP session.
pub struct ConnectionActor {
    shared: Shared,
    config: Arc<SessionConfig>,
    resolver: Option<Arc<TokioResolver>>,
    socket: Option<std::net::TcpStream>,
    peer: SocketAddr,
    _permit: Permit,
    /// A session the drain waits for.
    _working: crate::drain::Working,
    /// Counts the session in `mailflow_smtp_sessions_*`.
    _counted: crate::metrics::SessionGauge,
}

impl std::fmt::Debug for ConnectionActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionActor").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(socket), shared, config, resolver, addr) =
            (self.socket.take(), self.shared.clone(), Arc::clone(&self.config), self.resolver.clone(), self.peer)
        else {
            ctx.stop();
            return;
        };
        let session = async move {
            // The socket was accepted on the listener's runtime; it joins this arbiter's here.
            let Ok(tcp) = TcpStream::from_std(socket) else { return };
            let local = tcp.local_addr().ok();
            // Anonymous IPv6 needs a PTR record (spec 3.2a); look it up before the banner.
            let ptr = match (&resolver, addr.ip()) {
                (Some(resolver), std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                    Some(crate::dns::ptr(resolver, addr.ip()).await)
                }
                _ => None,
            };
            let peer = Peer { addr, local, ptr };
            let (session, first) = Session::new(config, Arc::clone(&shared.policy), peer);
            driver::run(shared, session, first, tcp).await;
        };
        ctx.spawn(session.into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

/// Everything a listener needs.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Shared by its sessions.
    pub shared: Shared,
    /// Session settings of this listener.
    pub config: Arc<SessionConfig>,
    /// Connection limits, shared by all listeners.
    pub limits: Arc<ConnectionLimits>,
    /// For PTR lookups of IPv6 clients.
    pub resolver: Option<Arc<TokioResolver>>,
    /// Arbiters sessions run on.
    pub arbiters: Arc<Vec<ArbiterHandle>>,
}

impl Listener {
    /// Accepts connections until the socket fails.
    pub async fn run(self, socket: TcpListener) {
        let next = AtomicUsize::new(0);
        loop {
            let (tcp, addr) = match socket.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if self.shared.drain.is_draining() {
                self.refuse(tcp, addr, Reply::ShuttingDown, RejectReason::ShuttingDown);
                continue;
            }
            let Some(permit) = self.limits.try_acquire(addr.ip()) else {
                self.refuse(tcp, addr, Reply::TooManyConnections, RejectReason::TooManyConnections);
                continue;
            };
            let Ok(socket) = tcp.into_std() else { continue };
            let actor = ConnectionActor {
                shared: self.shared.clone(),
                config: Arc::clone(&self.config),
                resolver: self.resolver.clone(),
                socket: Some(socket),
                peer: addr,
                _permit: permit,
                _working: self.shared.drain.working(),
                _counted: crate::metrics::SessionGauge::start(&self.config.listener),
            };
            let arbiter = &self.arbiters[next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len()];
            ConnectionActor::start_in_arbiter(arbiter, move |_| actor);
        }
    }

    /// `421 4.7.0` to a connection over the limits (`421 4.3.2` while
    /// draining), recorded for the trace.
    fn refuse(&self, mut tcp: TcpStream, addr: SocketAddr, reply: Reply, reason: RejectReason) {
        let shared = self.shared.clone();
        let listener = self.config.listener.clone();
        actix_rt::spawn(async move {
            let _ = tcp.write_all(reply.render().as_bytes()).await;
            let _ = tcp.shutdown().await;
            let event = ReceivedEvent::ConnectionRefused(ConnectionRefused {
                listener,
                client_ip: addr.ip().to_string(),
                client_port: addr.port(),
                reply: reply.to_event(),
                reason,
            });
            accept::record(shared.log.as_ref(), &shared.producer, &addr.to_string(), event).await;
        });
    }
}
