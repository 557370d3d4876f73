//! The integration-test harness: what the tests in `tests/tests/` start and
//! drive. Everything runs on loopback with real parts: the event log backends,
//! a Kafka-protocol broker, and (in later suites) the router and its peers.

pub mod broker;
pub mod clients;
pub mod conformance;
pub mod crash;
pub mod dns;
pub mod dovecot;
pub mod k8s;
pub mod logs;
pub mod otlp;
pub mod pki;
pub mod postfix;
pub mod router;
pub mod rspamd;
pub mod sink;
pub mod traffic;
pub mod wire;
