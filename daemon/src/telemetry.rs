//! Logging set-up: `tracing` with structured fields; JSON lines when stderr is not a terminal
//! (journald, containers), human-readable text on a terminal. `RUST_LOG` filters.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
