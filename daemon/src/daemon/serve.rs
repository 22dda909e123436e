//! The daemon's event loop: containerd events, decision events from the backend, the status
//! socket, SIGTERM (stop) and SIGHUP (reload the policy, re-judge everything).

use std::{io::Write as _, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt as _,
    net::UnixListener,
    signal::unix::{signal, SignalKind},
};

use super::{Daemon, DaemonError};
use crate::enforce::Backend;

/// Where decision events go besides stdout.
pub struct Outputs {
    /// Appended JSON lines.
    pub event_log: Option<std::fs::File>,
    /// The status socket path.
    pub status_socket: PathBuf,
    /// The policy file, re-read on SIGHUP.
    pub policy_path: PathBuf,
}

/// How long to wait before reconnecting to containerd.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often queued decision events are written out.
const EVENT_DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// Runs until SIGTERM or SIGINT. The backend keeps enforcing after this returns (BPF pins).
pub async fn serve<B: Backend>(
    mut daemon: Daemon<B>,
    mut outputs: Outputs,
) -> Result<(), DaemonError> {
    let io = |source: std::io::Error| DaemonError::Io {
        what: "signals or status socket",
        source,
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(io)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(io)?;
    if let Some(parent) = outputs.status_socket.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let _ = std::fs::remove_file(&outputs.status_socket);
    let status = UnixListener::bind(&outputs.status_socket).map_err(io)?;
    let mut drain = tokio::time::interval(EVENT_DRAIN_INTERVAL);
    let mut watchdog = crate::systemd::Watchdog::from_env();
    let metrics = crate::metrics::global();

    loop {
        // Subscribe first, then reconcile: nothing that happens in between is missed.
        let mut events = daemon.containerd.events();
        let reconciled = watchdog.during(daemon.reconcile()).await;
        metrics.reconciled(reconciled.is_ok());
        observe(&daemon);
        if let Err(error) = reconciled {
            daemon.note_error("reconciliation", &error);
            tracing::warn!(error = %crate::doctor::error_chain(&error), "reconciliation failed; retrying");
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        tracing::info!(status = %daemon.status(), "reconciled with containerd");
        notify_ready();
        loop {
            // Records that could not be catalogued are retried when due (never: a far future).
            let retry_at = daemon
                .next_retry()
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                message = events.recv() => match message {
                    Some(envelope) => {
                        if let Err(error) = daemon.handle_event(&envelope).await {
                            daemon.note_error(&envelope.topic, &error);
                            tracing::warn!(topic = %envelope.topic, error = %crate::doctor::error_chain(&error), "event handling failed");
                        }
                        observe(&daemon);
                    }
                    None => {
                        tracing::warn!("containerd event stream ended; reconnecting and reconciling");
                        break;
                    }
                },
                () = tokio::time::sleep_until(retry_at) => {
                    if let Err(error) = daemon.retry_uncatalogued().await {
                        daemon.note_error("retrying uncatalogued images", &error);
                        tracing::warn!(error = %crate::doctor::error_chain(&error), "retrying uncatalogued images failed");
                    }
                    observe(&daemon);
                }
                _ = drain.tick() => write_events(&mut daemon, &mut outputs),
                () = watchdog.tick() => watchdog.ping(),
                accepted = status.accept() => {
                    if let Ok((mut stream, _)) = accepted {
                        let body = serde_json::to_vec_pretty(&daemon.status()).unwrap_or_default();
                        let _ = stream.write_all(&body).await;
                    }
                }
                _ = hangup.recv() => match crate::policy::Policy::load(&outputs.policy_path) {
                    Ok(policy) => {
                        tracing::info!(policy = %outputs.policy_path.display(), "policy reloaded; re-judging every image");
                        if let Err(error) = daemon.set_policy(Arc::new(policy)).await {
                            daemon.note_error("re-judging after a policy reload", &error);
                            tracing::warn!(error = %crate::doctor::error_chain(&error), "re-judging after reload failed");
                        }
                        observe(&daemon);
                    }
                    Err(error) => {
                        daemon.note_error("policy reload rejected", &error);
                        tracing::error!(error = %crate::doctor::error_chain(&error), "new policy rejected; keeping the old one");
                    }
                },
                _ = terminate.recv() => return stop(&mut daemon, &mut outputs),
                _ = interrupt.recv() => return stop(&mut daemon, &mut outputs),
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// The table's and the image records' gauges.
fn observe<B: Backend>(daemon: &Daemon<B>) {
    let metrics = crate::metrics::global();
    metrics.observe_table(&daemon.table, daemon.writable.len());
    let (judged, total) = daemon.records();
    metrics.observe_records(judged, total - judged);
}

fn stop<B: Backend>(daemon: &mut Daemon<B>, outputs: &mut Outputs) -> Result<(), DaemonError> {
    crate::metrics::global().stopping();
    crate::systemd::notify("STOPPING=1");
    write_events(daemon, outputs);
    let _ = std::fs::remove_file(&outputs.status_socket);
    tracing::info!(
        backend = daemon.backend.name(),
        "stopping; the kernel keeps enforcing the last table"
    );
    Ok(())
}

fn write_events<B: Backend>(daemon: &mut Daemon<B>, outputs: &mut Outputs) {
    let decisions = daemon.backend.drain_events();
    if decisions.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    for decision in &decisions {
        crate::metrics::global().decision(daemon.backend.name(), decision.verdict, decision.hook);
        let line = daemon.describe(decision).to_string();
        let _ = writeln!(stdout, "{line}");
        if let Some(file) = outputs.event_log.as_mut() {
            let _ = writeln!(file, "{line}");
        }
        daemon.events_seen += 1;
    }
    let _ = stdout.flush();
}

/// Tells systemd (`Type=notify`) that the daemon is ready, when it runs under systemd.
fn notify_ready() {
    crate::systemd::notify("READY=1");
}
