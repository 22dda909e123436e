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
    /// The pull-verdict socket (`imagegate containerd-verifier` asks there), root only.
    pub verify_socket: PathBuf,
    /// The policy file, re-read on SIGHUP.
    pub policy_path: PathBuf,
}

/// How long to wait before reconnecting to containerd.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often queued decision events are written out.
const EVENT_DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// The longest a reconciliation's catalogue (containerd only) may take before it is retried.
const CATALOGUE_LIMIT: Duration = Duration::from_secs(300);
/// How long a status client may take to read its answer.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
    let verify = bind_private(&outputs.verify_socket).map_err(|source| DaemonError::Io {
        what: "the verify socket",
        source,
    })?;
    let pull_permits = Arc::new(tokio::sync::Semaphore::new(crate::pullgate::CONCURRENCY));
    let platforms = Arc::new(crate::pullgate::PlatformChoices::default());
    let (asks, mut questions) = tokio::sync::mpsc::channel::<Ask>(EXPLAIN_QUEUE);
    let mut drain = tokio::time::interval(EVENT_DRAIN_INTERVAL);
    let mut watchdog = crate::systemd::Watchdog::from_env();
    let metrics = crate::metrics::global();
    let mut ready = false;
    // A policy reload whose table could not be built: retried with back-off (attempts, when).
    let mut reload_retry: Option<(u32, tokio::time::Instant)> = None;
    // The policy as loaded from its file; the one in force is it under the public-good root in
    // use ([`crate::policy::Policy::under_public_good_root`]), which changes without a reload.
    let mut loaded = Arc::clone(daemon.policy());
    let mut root_changes = crate::tuf::installed().map(|tuf| tuf.watch_root());

    loop {
        // Subscribe first, then reconcile: nothing that happens in between is missed. The
        // catalogue is read in the loop (containerd only); the verdicts are worked out in a
        // task of their own while the loop goes on; the new table is swapped in at its end.
        let mut events = daemon.containerd.events();
        // containerd is local and trusted, but a hung one must not feed the watchdog forever.
        let begun =
            match tokio::time::timeout(CATALOGUE_LIMIT, watchdog.during(daemon.begin_rebuild()))
                .await
            {
                Ok(begun) => begun,
                Err(_) => Err(DaemonError::Io {
                    what: "cataloguing containerd's images",
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", CATALOGUE_LIMIT.as_secs()),
                    ),
                }),
            };
        let mut rebuilding = match begun {
            Ok(rebuild) => Some(Rebuilding {
                task: tokio::spawn(daemon.verify_rebuild(rebuild)),
                reload: false,
            }),
            Err(error) => {
                metrics.reconciled(false);
                observe(&daemon);
                daemon.note_error("reconciliation", &error);
                tracing::warn!(error = %crate::telemetry::error_chain(&error), "reconciliation failed; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        // A reload asked for while a table was being rebuilt: rebuilt again once it is in.
        let mut reload_pending = false;
        loop {
            // Records that could not be catalogued, and verifications that ran out of time,
            // are retried when due (never: a far future).
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let retry_at = daemon.next_retry().unwrap_or(far);
            let reload_at = reload_retry.map_or(far, |(_, at)| at);
            tokio::select! {
                joined = async { (&mut rebuilding.as_mut().expect("guarded").task).await }, if rebuilding.is_some() => {
                    let reload = rebuilding.take().is_some_and(|r| r.reload);
                    let result = match joined {
                        Ok(rebuilt) => daemon.finish_rebuild(rebuilt).await,
                        Err(error) => {
                            tracing::error!(%error, "the reconciliation's verification task failed");
                            Err(DaemonError::Io { what: "the reconciliation's verification task", source: std::io::Error::other(error.to_string()) })
                        }
                    };
                    observe(&daemon);
                    match result {
                        Ok(()) => {
                            metrics.reconciled(true);
                            reload_retry = None;
                            tracing::info!(status = %daemon.status(), reload, "reconciled with containerd");
                            if !ready {
                                notify_ready();
                                ready = true;
                            }
                            if reload_pending {
                                reload_pending = false;
                                rebuilding = start_rebuild(&mut daemon, &mut reload_retry).await;
                            }
                        }
                        Err(DaemonError::Stale) => {
                            tracing::info!("the policy changed during the rebuild; rebuilding under the new one");
                            reload_pending = false;
                            rebuilding = start_rebuild(&mut daemon, &mut reload_retry).await;
                        }
                        Err(error) if reload || ready => {
                            // The old table stays whole; the rebuild is retried with back-off.
                            daemon.note_error("rebuilding the table", &error);
                            let attempts = reload_retry.map_or(0, |(n, _)| n) + 1;
                            let delay = super::retry_delay(attempts);
                            metrics.reload_failure();
                            tracing::warn!(error = %crate::telemetry::error_chain(&error), attempts, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "the new table could not be built; the old one stays");
                            reload_retry = Some((attempts, tokio::time::Instant::now() + delay));
                        }
                        Err(error) => {
                            metrics.reconciled(false);
                            daemon.note_error("reconciliation", &error);
                            tracing::warn!(error = %crate::telemetry::error_chain(&error), "reconciliation failed; retrying");
                            break;
                        }
                    }
                }
                done = daemon.next_verified() => {
                    if let Err(error) = daemon.complete(done) {
                        daemon.note_error("recording a verdict", &error);
                        tracing::warn!(error = %crate::telemetry::error_chain(&error), "recording a verdict failed");
                    }
                    observe(&daemon);
                }
                message = events.recv() => match message {
                    Some(envelope) => {
                        if let Err(error) = daemon.handle_event(&envelope).await {
                            daemon.note_error(&envelope.topic, &error);
                            tracing::warn!(topic = %envelope.topic, error = %crate::telemetry::error_chain(&error), "event handling failed");
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
                        tracing::warn!(error = %crate::telemetry::error_chain(&error), "retrying uncatalogued images failed");
                    }
                    observe(&daemon);
                }
                () = tokio::time::sleep_until(reload_at), if rebuilding.is_none() && reload_retry.is_some() => {
                    rebuilding = start_rebuild(&mut daemon, &mut reload_retry).await;
                }
                _ = drain.tick() => write_events(&mut daemon, &mut outputs, false),
                () = watchdog.tick() => watchdog.ping(),
                // Answered once the first table is in (clients wait in the backlog until then):
                // a status answer means reconciled, as `imagegate status` users rely on.
                accepted = status.accept(), if ready => {
                    if let Ok((stream, _)) = accepted {
                        let body = serde_json::to_vec_pretty(&daemon.status()).unwrap_or_default();
                        // Read and written by a task of its own: a client that does not send or
                        // read cannot hold the loop. An `explain` request comes back here.
                        tokio::spawn(status_client(stream, body, asks.clone()));
                    }
                }
                Some(ask) = questions.recv() => {
                    let answer = daemon.explain(&ask.target, ask.namespace.as_deref());
                    tracing::info!(target = %ask.target, namespace = ?ask.namespace, answer = answer_kind(&answer), "explain answered");
                    let _ = ask.reply.send(answer);
                }
                // Pull verdicts for containerd's image verifier hook: answered at once (they
                // need no table), each in a task of its own, a bounded number at a time.
                accepted = verify.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let judge = crate::pullgate::Judge {
                            policy: Arc::clone(&daemon.verifier.policy),
                            client: Arc::clone(&daemon.verifier.client),
                            cache: Some(Arc::clone(&daemon.verifier.cache)),
                            mode: daemon.settings.map_or(crate::enforce::Mode::Enforce, |(mode, _)| mode),
                            answered_by: "daemon",
                            platforms: Arc::clone(&platforms),
                        };
                        let permits = Arc::clone(&pull_permits);
                        tokio::spawn(async move {
                            let Ok(_permit) = permits.acquire_owned().await else { return };
                            crate::pullgate::serve_connection(stream, judge).await;
                        });
                    }
                }
                _ = hangup.recv() => match crate::policy::Policy::load(&outputs.policy_path) {
                    Ok(policy) => {
                        tracing::info!(policy = %outputs.policy_path.display(), "policy reloaded; re-judging every image aside, swapped in once done");
                        let root = crate::tuf::installed().and_then(|tuf| {
                            tuf.set_wanted(policy.uses_public_good());
                            tuf.refresh_soon();
                            tuf.usable_root()
                        });
                        loaded = Arc::new(policy);
                        let policy = loaded.under_public_good_root(root.as_deref());
                        adopt(&mut daemon, policy, &mut rebuilding, &mut reload_retry, &mut reload_pending).await;
                    }
                    Err(error) => {
                        daemon.note_error("policy reload rejected", &error);
                        metrics.reload_failure();
                        tracing::error!(error = %crate::telemetry::error_chain(&error), "new policy rejected; keeping the old one");
                    }
                },
                // The public-good root TUF serves changed (a new one, or the one in use expired):
                // a policy naming it means something else now, so everything is re-judged.
                changed = async { root_changes.as_mut().expect("guarded").changed().await }, if root_changes.is_some() => {
                    let Ok(()) = changed else {
                        root_changes = None;
                        continue;
                    };
                    let root = root_changes.as_mut().and_then(|r| r.borrow_and_update().clone());
                    let policy = loaded.under_public_good_root(root.as_deref());
                    if policy.hash != daemon.policy().hash {
                        tracing::info!(root = ?root, "the public-good trusted root in use changed; re-judging every image aside, swapped in once done");
                        adopt(&mut daemon, policy, &mut rebuilding, &mut reload_retry, &mut reload_pending).await;
                    }
                }
                _ = terminate.recv() => return stop(&mut daemon, &mut outputs),
                _ = interrupt.recv() => return stop(&mut daemon, &mut outputs),
            }
        }
        if let Some(rebuilding) = rebuilding.take() {
            rebuilding.task.abort();
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// `explain` requests waiting for the event loop; more are answered "busy".
const EXPLAIN_QUEUE: usize = 16;

/// An `explain` request for the event loop, and where its answer goes.
struct Ask {
    target: String,
    namespace: Option<String>,
    reply: tokio::sync::oneshot::Sender<crate::explain::Answer>,
}

fn answer_kind(answer: &crate::explain::Answer) -> &'static str {
    use crate::explain::Answer;
    match answer {
        Answer::Explained(_) => "explained",
        Answer::Unknown { .. } => "unknown",
        Answer::Ambiguous { .. } => "ambiguous",
        Answer::Error { .. } => "error",
    }
}

/// One status-socket client: the status document `status` unless it sends a request line
/// ([`crate::explain::Request`]) within [`crate::explain::REQUEST_WAIT`]; an `explain` request
/// is answered by the event loop (through `asks`).
async fn status_client(
    mut stream: tokio::net::UnixStream,
    status: Vec<u8>,
    asks: tokio::sync::mpsc::Sender<Ask>,
) {
    use crate::explain::{Answer, Request, MAX_REQUEST_BYTES, REQUEST_WAIT};
    let mut line = Vec::new();
    // A silent client (an older `imagegate status`, `socat`) gets the status after the wait.
    let _ = tokio::time::timeout(REQUEST_WAIT, async {
        let mut chunk = [0u8; 1024];
        while line.len() <= MAX_REQUEST_BYTES && !line.contains(&b'\n') {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => line.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let body = match Request::parse(&line) {
        _ if line.len() > MAX_REQUEST_BYTES => answer_bytes(&Answer::Error {
            message: format!("request longer than {MAX_REQUEST_BYTES} bytes"),
        }),
        Ok(Request::Status) => status,
        Ok(Request::Explain { target, namespace }) => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let ask = Ask {
                target,
                namespace,
                reply,
            };
            match asks.try_send(ask) {
                Ok(()) => match tokio::time::timeout(STATUS_WRITE_TIMEOUT, answer).await {
                    Ok(Ok(answer)) => answer_bytes(&answer),
                    _ => answer_bytes(&Answer::Error {
                        message: "the daemon did not get to the request in time".to_owned(),
                    }),
                },
                Err(_) => answer_bytes(&Answer::Error {
                    message: "busy: too many explain requests at once".to_owned(),
                }),
            }
        }
        Err(error) => answer_bytes(&Answer::Error {
            message: error.to_string(),
        }),
    };
    let _ = tokio::time::timeout(STATUS_WRITE_TIMEOUT, stream.write_all(&body)).await;
}

fn answer_bytes(answer: &crate::explain::Answer) -> Vec<u8> {
    serde_json::to_vec_pretty(answer).unwrap_or_default()
}

/// A table being rebuilt aside: its verification task.
struct Rebuilding {
    task: tokio::task::JoinHandle<super::Rebuilt>,
    /// Started by a policy reload (a failure keeps the old table and is retried).
    reload: bool,
}

/// Puts `policy` in force (a reload, or a new public-good root): what it can be seen not to vouch
/// for is revoked at once, and every image is re-judged aside and swapped in once done (after
/// the rebuild under way, if one is).
async fn adopt<B: Backend>(
    daemon: &mut Daemon<B>,
    policy: crate::policy::Policy,
    rebuilding: &mut Option<Rebuilding>,
    reload_retry: &mut Option<(u32, tokio::time::Instant)>,
    reload_pending: &mut bool,
) {
    daemon.replace_policy(Arc::new(policy)).await;
    *reload_retry = None;
    if rebuilding.is_some() {
        *reload_pending = true;
    } else {
        *rebuilding = start_rebuild(daemon, reload_retry).await;
    }
    observe(daemon);
}

/// Starts rebuilding the table under the policy in force (a reload): the catalogue now, the
/// verdicts in a task. A failure keeps the old table and schedules a retry with back-off.
async fn start_rebuild<B: Backend>(
    daemon: &mut Daemon<B>,
    retry: &mut Option<(u32, tokio::time::Instant)>,
) -> Option<Rebuilding> {
    match daemon.begin_rebuild().await {
        Ok(rebuild) => Some(Rebuilding {
            task: tokio::spawn(daemon.verify_rebuild(rebuild)),
            reload: true,
        }),
        Err(error) => {
            daemon.note_error("rebuilding the table", &error);
            crate::metrics::global().reload_failure();
            let attempts = retry.map_or(0, |(n, _)| n) + 1;
            let delay = super::retry_delay(attempts);
            tracing::warn!(error = %crate::telemetry::error_chain(&error), attempts, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "the new table could not be built; the old one stays");
            *retry = Some((attempts, tokio::time::Instant::now() + delay));
            None
        }
    }
}

/// A unix socket at `path` that only root (the daemon's user) may connect to: mode 0600 (and
/// [`crate::pullgate::serve_connection`] checks the peer's user too).
fn bind_private(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
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
    write_events(daemon, outputs, true);
    let _ = std::fs::remove_file(&outputs.status_socket);
    let _ = std::fs::remove_file(&outputs.verify_socket);
    if !daemon.backend.enforces_after_exit() {
        tracing::info!(
            backend = daemon.backend.name(),
            "stopping; nothing is enforced until the daemon runs again (fanotify's permission events end with the process)"
        );
    } else {
        tracing::info!(
            backend = daemon.backend.name(),
            "stopping; the kernel keeps enforcing the last table (pinned programs and maps)"
        );
    }
    Ok(())
}

/// Writes out the decisions ready to be described ([`Daemon::ready_decisions`]); `flush`
/// writes every one.
fn write_events<B: Backend>(daemon: &mut Daemon<B>, outputs: &mut Outputs, flush: bool) {
    let drained = daemon.backend.drain_events();
    let decisions = daemon.ready_decisions(drained, flush);
    if decisions.is_empty() {
        return;
    }
    daemon.paths.refill();
    let mut stdout = std::io::stdout().lock();
    for decision in &decisions {
        crate::metrics::global().decision(daemon.backend.name(), decision.verdict, decision.hook);
        let event = daemon.describe(decision);
        // Kept for `imagegate explain`, per container.
        if let (Some(namespace), Some(id), Some(denial)) = (
            event["container"]["namespace"].as_str(),
            event["container"]["id"].as_str(),
            crate::explain::Denial::from_event(&event),
        ) {
            daemon.containers.note_denial(namespace, id, denial);
        }
        let line = event.to_string();
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
