//! The child side: runs the backend (or the minimal allow-all floor responder) on the scope it
//! is given and obeys one command per stdin line, answering with one `@@ ` line.

use std::{
    io::{BufRead as _, Write as _},
    path::Path,
    time::Duration,
};

use imagegate::enforce::{
    fanotify::{sys, FanotifyBackend, FanotifyConfig, Stall, Strategy},
    Backend as _, Drift, LayerId, LayerState, Mode,
};

use super::{ChildConfig, CHILD_ENV, REPLY};

fn reply(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{REPLY}{text}");
    let _ = out.flush();
}

/// Entry point of the `responder_process` test: does nothing unless started by a `Responder`.
pub fn main() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config: ChildConfig = serde_json::from_str(&config).expect("child config");
    imagegate::telemetry::init();
    match config.kind.as_str() {
        "floor" => floor(&config),
        "idle" => idle(),
        _ => backend(&config),
    }
}

fn layer_arg(parts: &[&str]) -> Option<LayerId> {
    Some(LayerId {
        dev: parts.get(1)?.parse().ok()?,
        ino: parts.get(2)?.parse().ok()?,
        generation: parts.get(3)?.parse().ok()?,
    })
}

fn backend(config: &ChildConfig) {
    let mut backend = match FanotifyBackend::start(FanotifyConfig {
        mode: if config.mode == "audit" {
            Mode::Audit
        } else {
            Mode::Enforce
        },
        drift: Drift::Deny,
        bound: Duration::from_millis(config.bound_ms),
        workers: 0,
        strategy: match config.strategy.as_str() {
            "backing" => Strategy::Backing,
            "overlay" => Strategy::Overlay,
            _ => Strategy::Auto,
        },
        ignore_marks: config.ignore_marks,
        decide_in_reader: !config.hand_off,
        runtime_binaries: config.runtimes.iter().map(Into::into).collect(),
        stall: config.stall.map(|(dev, ino, generation, ms)| Stall {
            layer: LayerId {
                dev,
                ino,
                generation,
            },
            duration: Duration::from_millis(ms),
        }),
    }) {
        Ok(backend) => backend,
        Err(error) => {
            reply(&format!(
                "error {}",
                imagegate::telemetry::error_chain(&error)
            ));
            return;
        }
    };
    if let Err(error) = backend.add_scope(Path::new(&config.scope)) {
        reply(&format!(
            "error {}",
            imagegate::telemetry::error_chain(&error)
        ));
        return;
    }
    reply(&format!(
        "ready {:?} (chosen by {})",
        backend.strategy(),
        backend.strategy_how()
    ));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let result: Result<String, String> = match (parts.first().copied(), layer_arg(&parts)) {
            (Some("layer"), Some(layer)) => {
                let state = if parts.get(4) == Some(&"writable") {
                    LayerState::Writable
                } else {
                    LayerState::Verified
                };
                backend
                    .set_layer(layer, state)
                    .map(|()| "ok".into())
                    .map_err(|e| e.to_string())
            }
            (Some("unlayer"), Some(layer)) => backend
                .remove_layer(layer)
                .map(|()| "ok".into())
                .map_err(|e| e.to_string()),
            (Some("mode"), _) => backend
                .set_mode(if parts.get(1) == Some(&"audit") {
                    Mode::Audit
                } else {
                    Mode::Enforce
                })
                .map(|()| "ok".into())
                .map_err(|e| e.to_string()),
            (Some("drift"), _) => backend
                .set_drift(if parts.get(1) == Some(&"allow") {
                    Drift::Allow
                } else {
                    Drift::Deny
                })
                .map(|()| "ok".into())
                .map_err(|e| e.to_string()),
            (Some("events"), _) => {
                serde_json::to_string(&backend.drain_events()).map_err(|e| e.to_string())
            }
            (Some("stats"), _) => {
                serde_json::to_string(&backend.stats()).map_err(|e| e.to_string())
            }
            (Some("overlays"), _) => Ok(backend.marked_overlays().to_string()),
            (Some("rescan"), _) => {
                backend.rescan_overlays();
                Ok("ok".into())
            }
            (Some("flush"), _) => {
                backend.flush_ignore_marks();
                Ok("ok".into())
            }
            _ => Err(format!("unknown command {line:?}")),
        };
        match result {
            Ok(text) => reply(&text),
            Err(error) => reply(&format!("error {error}")),
        }
    }
}

/// A child that only exists: no group, no mark. Beside `off` it shows what the mere presence of
/// the responder process (started just before, waiting on stdin) costs the execs measured.
fn idle() {
    reply("ready idle");
    for line in std::io::stdin().lock().lines() {
        let Ok(_) = line else { break };
        reply("ok");
    }
}

/// The cost floor of a fanotify round trip: the same group and mark, every event allowed at
/// once, no ignore marks, no look-ups.
fn floor(config: &ChildConfig) {
    let group = match sys::Group::new() {
        Ok(group) => group,
        Err(error) => return reply(&format!("error {error}")),
    };
    if let Err(error) = group.mark_filesystem(true, sys::MarkAt::Path(Path::new(&config.scope))) {
        return reply(&format!("error {error}"));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread_stop = std::sync::Arc::clone(&stop);
    let answering = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        while !thread_stop.load(std::sync::atomic::Ordering::Relaxed) {
            use std::os::fd::AsFd as _;
            if !sys::poll_one(group.as_fd(), libc::POLLIN, 200).unwrap_or(false) {
                continue;
            }
            for event in group.read_events(&mut buffer).unwrap_or_default() {
                if let Some(fd) = &event.fd {
                    let _ = group.respond(fd.as_fd(), true);
                }
            }
        }
    });
    reply("ready floor");
    for line in std::io::stdin().lock().lines() {
        let Ok(_) = line else { break };
        reply("ok");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = answering.join();
}
