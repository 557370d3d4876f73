//! `config_parse`: arbitrary text into the configuration loader.
//!
//! Input: the text of a configuration file (inputs that are not UTF-8 are
//! skipped: `Config::load` refuses them before parsing).
//!
//! Checked: no panic and no hang, in parsing (TOML, unknown keys, humane
//! durations, addresses and networks), in validation, and in building what
//! the router builds from a valid configuration (the inbound policy, the
//! router, the NDR generator, each listener's session settings). Errors are
//! values that render.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mailflow_actors::config::Config;
use mailflow_actors::connection::session::SessionConfig;
use mailflow_actors::policy::InboundPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut config = match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => config,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    // DKIM keys are files the configuration names; reading them is not
    // parsing (and a fuzzer must not read /dev/zero).
    config.dkim_signing.clear();
    if let Err(err) = config.validate() {
        assert!(!err.to_string().is_empty());
        return;
    }
    let policy = Arc::new(InboundPolicy::new(&config));
    let _router = mailflow_actors::routing::Router::new(&config, Arc::clone(&policy));
    let _ndr = mailflow_actors::ndr::NdrPolicy::new(&config, policy);
    for listener in &config.server.listeners {
        let _ = SessionConfig::new(&config.server, &listener.name, listener.kind);
    }
});
