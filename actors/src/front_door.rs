//! Starts the SMTP front door: binds every listener, builds what sessions
//! share, and runs the accept loops on the current actix system.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_rt::Arbiter;
use mailflow_events::log::EventLog;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::connection::actor::Listener;
use crate::connection::driver::Shared;
use crate::connection::limits::ConnectionLimits;
use crate::connection::session::SessionConfig;
use crate::policy::InboundPolicy;

/// Why the front door could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound (in use, no permission).
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate or key unusable.
    #[error(transparent)]
    Tls(#[from] crate::connection::tls::TlsSetupError),
}

/// A running front door: the addresses its listeners are bound to.
#[derive(Debug)]
pub struct FrontDoor {
    /// `(listener name, bound address)`, in configuration order.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Arbiters running the sessions; stopped on drop.
    arbiters: Vec<Arbiter>,
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Binds and starts every listener of `config`. Sessions run on one arbiter per core.
/// `authenticator` wraps the process's one resolver, shared with the verdict
/// role so that both use one DNS cache.
pub async fn start(
    config: &Config,
    log: Arc<dyn EventLog>,
    authenticator: Arc<mail_auth::MessageAuthenticator>,
    producer: &str,
    drain: crate::drain::Drain,
) -> Result<FrontDoor, StartError> {
    let server = &config.server;
    let tls = match &server.tls {
        Some(tls) => Some(crate::connection::tls::acceptor(&tls.certificate, &tls.key, tls.client_ca.as_deref())?),
        None => None,
    };
    let resolver = Some(Arc::new(authenticator.0.clone()));
    let shared = Shared {
        log,
        policy: Arc::new(InboundPolicy::new(config)),
        tls,
        producer: producer.to_string(),
        command_timeout: server.command_timeout,
        data_timeout: server.data_timeout,
        min_data_rate: server.min_data_rate,
        session_timeout: server.session_timeout,
        authenticator,
        hostname: server.hostname.clone(),
        anti_spam: Arc::new(config.anti_spam.clone()),
        drain,
        drain_timeout: server.drain_timeout,
        content_encoding: config.event_log.content_encoding(),
    };
    let limits = ConnectionLimits::new(server.max_connections, server.max_connections_per_ip);
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let arbiters: Vec<Arbiter> = (0..cores).map(|_| Arbiter::new()).collect();
    let handles = Arc::new(arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>());
    let mut bound = Vec::new();
    for listener in &server.listeners {
        let socket = TcpListener::bind(listener.address)
            .await
            .map_err(|source| StartError::Bind { address: listener.address, source })?;
        let address = socket.local_addr().map_err(|source| StartError::Bind { address: listener.address, source })?;
        let runner = Listener {
            shared: shared.clone(),
            config: Arc::new(SessionConfig::new(server, &listener.name, listener.kind)),
            limits: Arc::clone(&limits),
            resolver: resolver.clone(),
            arbiters: Arc::clone(&handles),
        };
        actix_rt::spawn(runner.run(socket));
        bound.push((listener.name.clone(), address));
    }
    Ok(FrontDoor { listeners: bound, arbiters })
}
