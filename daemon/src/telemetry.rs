//! Logging set-up: `tracing` with structured fields on stderr. `log_format = "auto"` (the
//! default) writes JSON lines when stderr is not a terminal (journald, container logs: one
//! object per line, fields kept as fields) and human-readable text on a terminal. Decision
//! events are not logs: they are JSON lines on stdout whatever this says.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Whether lines should be JSON for this format, given whether stderr is a terminal.
#[must_use]
pub fn json_lines(format: LogFormat, stderr_is_terminal: bool) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !stderr_is_terminal,
    }
}

/// Installs the global subscriber with the `info` filter (or `RUST_LOG`) and `auto` format.
pub fn init() {
    init_with(LogFormat::Auto, "info");
}

/// Installs the global subscriber: `RUST_LOG` when set, else `level`. Later calls are ignored.
pub fn init_with(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json_lines(format, std::io::stderr().is_terminal()) {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// `error: cause: cause` in one line: how the daemon's logs and commands print an error chain.
/// A cause whose text the line already ends with (libraries that print their source in their
/// own message, such as tough's) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_json_off_a_terminal_and_text_on_one() {
        assert!(json_lines(LogFormat::Auto, false));
        assert!(!json_lines(LogFormat::Auto, true));
        assert!(json_lines(LogFormat::Json, true));
        assert!(!json_lines(LogFormat::Human, false));
    }
}
