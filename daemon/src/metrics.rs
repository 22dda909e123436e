//! Metrics in the Prometheus text format, and the health endpoints probes use, served over a
//! small HTTP/1.1 responder on a unix socket (the default: only root reaches it) or TCP.
//!
//! The counters are process-global atomics so that the places that count (the verifier, the
//! verdict cache, the registry client, the event loop) need no handle threaded through them;
//! a scrape renders them. The responder answers `GET /metrics`, `/healthz` and `/readyz`, one
//! request per connection, with bounded reads and a bounded number of connections: a scraper
//! that misbehaves cannot take the daemon's memory or file descriptors.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{daemon::table::LayerTable, discover::DiscoverError, verdict::Outcome};

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl Listen {
    /// `off` → `None`; an absolute path → unix socket; `host:port` → TCP.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text == "off" {
            return Ok(None);
        }
        if text.starts_with('/') {
            return Ok(Some(Self::Unix(PathBuf::from(text))));
        }
        text.parse::<SocketAddr>()
            .map(|addr| Some(Self::Tcp(addr)))
            .map_err(|_| {
                format!(
                    "{text:?} is neither \"off\", an absolute unix socket path, nor an IP address with a port (\"127.0.0.1:9464\")"
                )
            })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// Upper bounds (seconds) of the verification latency histogram: from a cached verdict
/// (microseconds) to a registry at its request timeout.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Verdict outcomes, in the order of [`Metrics::verifications`].
const OUTCOMES: [&str; 3] = ["trusted", "untrusted", "error"];

/// Registry error kinds, one per [`DiscoverError`] variant the client returns.
const REGISTRY_ERROR_KINDS: [&str; 8] = [
    "http",
    "timeout",
    "status",
    "too_large",
    "request_budget",
    "malformed",
    "digest_mismatch",
    "auth",
];

/// Where the daemon is in its reconciliation with containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reconcile {
    /// None finished yet (containerd not reached, or the first one running).
    Pending = 0,
    /// The last one succeeded.
    Ok = 1,
    /// The last one failed (it is being retried).
    Failed = 2,
}

/// The position of `outcome` in [`OUTCOMES`].
const fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Trusted => 0,
        Outcome::Untrusted => 1,
        Outcome::Error => 2,
    }
}

/// A latency histogram with fixed buckets.
#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything counted.
#[derive(Default)]
pub struct Metrics {
    verifications: [AtomicU64; 3],
    /// Manifests verified as they landed in the content store, before their image existed.
    early_verifications: [AtomicU64; 3],
    verification_latency: Histogram,
    /// (backend, verdict, hook) → decisions the backend reported.
    decisions: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    registry_errors: [AtomicU64; REGISTRY_ERROR_KINDS.len()],
    layers_verified: AtomicU64,
    layers_audit: AtomicU64,
    layers_writable: AtomicU64,
    images_trusted: AtomicU64,
    images_untrusted: AtomicU64,
    reconciliations_ok: AtomicU64,
    reconciliations_failed: AtomicU64,
    /// Attempts at cataloguing an image record that failed (each retry counts).
    catalog_failures: AtomicU64,
    records_judged: AtomicU64,
    records_uncatalogued: AtomicU64,
    reconcile: AtomicU8,
    /// Verifications that ran past their deadline (each gets an `error` verdict and a retry).
    verification_deadlines: AtomicU64,
    /// Verifications started and not finished.
    verifications_pending: AtomicU64,
    /// Policy reloads whose new table could not be built (the old one stays; retried).
    reload_failures: AtomicU64,
    /// Layers the backend had no room for (they stay unverified: denied).
    layers_refused: AtomicU64,
    /// Whether the backend's layer table is full (ready, but degraded).
    table_full: AtomicBool,
    backend: Mutex<Option<&'static str>>,
    stopping: AtomicBool,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
#[must_use]
pub fn global() -> &'static Metrics {
    &METRICS
}

/// What a probe gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `/healthz`: the backend is attached and the last reconciliation did not fail.
    pub live: bool,
    /// `/readyz`: the backend is attached and the last reconciliation succeeded.
    pub ready: bool,
    /// Why, in a few words.
    pub detail: String,
}

impl Metrics {
    /// One image verified: its outcome and how long it took (cache lookups included).
    pub fn verification(&self, outcome: Outcome, elapsed: Duration) {
        self.verifications[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        self.verification_latency.observe(elapsed);
    }

    /// A verification ran past its deadline.
    pub fn verification_deadline(&self) {
        self.verification_deadlines.fetch_add(1, Ordering::Relaxed);
    }

    /// Verifications started and not finished.
    pub fn observe_pending(&self, pending: usize) {
        self.verifications_pending.store(
            u64::try_from(pending).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A policy reload's new table could not be built; the old one stays.
    pub fn reload_failure(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The backend's layer table is full (`refused` layers did not fit), or has room again.
    pub fn table_full(&self, full: bool, refused: usize) {
        self.table_full.store(full, Ordering::Relaxed);
        self.layers_refused.fetch_add(
            u64::try_from(refused).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// One manifest verified early, as it landed in the content store. Counted apart from
    /// [`Self::verification`] (its image is counted there once it exists, usually from the
    /// cache), and observed in the same latency histogram: this is where the registry round
    /// trips and signature checks of a pull are paid.
    pub fn early_verification(&self, outcome: Outcome, elapsed: Duration) {
        self.early_verifications[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        self.verification_latency.observe(elapsed);
    }

    /// One decision the backend reported (`denied` or `audit`).
    pub fn decision(&self, backend: &'static str, verdict: &'static str, hook: &'static str) {
        if let Ok(mut decisions) = self.decisions.lock() {
            *decisions.entry((backend, verdict, hook)).or_default() += 1;
        }
    }

    /// A verdict answered from the cache (memory or the persisted store).
    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// A verdict that had to be computed.
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A registry request that failed.
    pub fn registry_error(&self, error: &DiscoverError) {
        let kind = match error {
            DiscoverError::Http { .. } => "http",
            DiscoverError::Timeout { .. } => "timeout",
            DiscoverError::Status { .. } => "status",
            DiscoverError::TooLarge { .. } => "too_large",
            DiscoverError::RequestBudget { .. } => "request_budget",
            DiscoverError::DigestMismatch { .. } => "digest_mismatch",
            DiscoverError::Auth { .. } => "auth",
            DiscoverError::Document { .. } | DiscoverError::Reference { .. } => "malformed",
        };
        if let Some(index) = REGISTRY_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.registry_errors[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The layer table's size and the images by verdict, after it changed.
    pub fn observe_table(&self, table: &LayerTable, writable: usize) {
        let desired = table.desired();
        let verified = desired
            .values()
            .filter(|d| **d == crate::daemon::table::Desired::Verified)
            .count();
        let (trusted, untrusted) = table.counts();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.layers_verified
            .store(count(verified), Ordering::Relaxed);
        self.layers_audit
            .store(count(desired.len() - verified), Ordering::Relaxed);
        self.layers_writable
            .store(count(writable), Ordering::Relaxed);
        self.images_trusted.store(count(trusted), Ordering::Relaxed);
        self.images_untrusted
            .store(count(untrusted), Ordering::Relaxed);
    }

    /// An attempt at cataloguing an image record failed (it is retried; meanwhile it vouches
    /// for nothing).
    pub fn catalog_failure(&self) {
        self.catalog_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Image records judged, and those waiting for a retry because they could not be
    /// catalogued.
    pub fn observe_records(&self, judged: usize, uncatalogued: usize) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.records_judged.store(count(judged), Ordering::Relaxed);
        self.records_uncatalogued
            .store(count(uncatalogued), Ordering::Relaxed);
    }

    /// The enforcement backend is attached (after its self-test, for BPF LSM).
    pub fn backend_attached(&self, name: &'static str) {
        if let Ok(mut backend) = self.backend.lock() {
            *backend = Some(name);
        }
        if let Ok(mut decisions) = self.decisions.lock() {
            for verdict in ["denied", "audit"] {
                decisions.entry((name, verdict, "exec")).or_default();
            }
        }
    }

    /// A reconciliation with containerd ended.
    pub fn reconciled(&self, ok: bool) {
        let (counter, state) = if ok {
            (&self.reconciliations_ok, Reconcile::Ok)
        } else {
            (&self.reconciliations_failed, Reconcile::Failed)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.reconcile.store(state as u8, Ordering::Relaxed);
    }

    /// The daemon is shutting down: probes fail from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn reconcile_state(&self) -> Reconcile {
        match self.reconcile.load(Ordering::Relaxed) {
            1 => Reconcile::Ok,
            2 => Reconcile::Failed,
            _ => Reconcile::Pending,
        }
    }

    fn backend_name(&self) -> Option<&'static str> {
        self.backend.lock().ok().and_then(|b| *b)
    }

    /// What `/healthz` and `/readyz` answer.
    #[must_use]
    pub fn health(&self) -> Health {
        let backend = self.backend_name();
        let state = self.reconcile_state();
        let stopping = self.stopping.load(Ordering::Relaxed);
        let detail = match (backend, state, stopping) {
            (_, _, true) => "stopping".to_owned(),
            (None, _, _) => "no enforcement backend attached".to_owned(),
            (Some(b), Reconcile::Pending, _) => {
                format!("{b} attached; waiting for containerd and the first reconciliation")
            }
            (Some(b), Reconcile::Ok, _) => format!("{b} attached; reconciled with containerd"),
            (Some(b), Reconcile::Failed, _) => {
                format!("{b} attached; the last reconciliation with containerd failed")
            }
        };
        // Ready, but degraded: new layers stay unverified (denied) until deletions make room.
        let detail = if self.table_full.load(Ordering::Relaxed) {
            format!("{detail}; degraded: the layer table is full, new layers stay denied")
        } else {
            detail
        };
        let attached = backend.is_some() && !stopping;
        Health {
            live: attached && state != Reconcile::Failed,
            ready: attached && state == Reconcile::Ok,
            detail,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        // One sample per label value: `name{label="value"} n`.
        let samples = |out: &mut String, name: &str, label: &str, values: &[(&str, u64)]| {
            for (value, count) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
            }
        };

        for (name, help, counters) in [
            (
                "imagegate_verifications_total",
                "Images verified, by verdict outcome.",
                &self.verifications,
            ),
            (
                "imagegate_early_verifications_total",
                "Manifests verified as they landed in the content store, before their image existed, by verdict outcome.",
                &self.early_verifications,
            ),
        ] {
            header(&mut out, name, "counter", help);
            let outcomes: Vec<(&str, u64)> = OUTCOMES
                .iter()
                .zip(counters)
                .map(|(outcome, counter)| (*outcome, load(counter)))
                .collect();
            samples(&mut out, name, "outcome", &outcomes);
        }

        header(
            &mut out,
            "imagegate_verification_duration_seconds",
            "histogram",
            "Time to reach a verdict for one image (cache lookups, registry requests, signature checks).",
        );
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS
            .iter()
            .map(ToString::to_string)
            .chain(std::iter::once("+Inf".to_owned()))
            .zip(&self.verification_latency.buckets)
        {
            cumulative += load(bucket);
            let _ = writeln!(
                out,
                "imagegate_verification_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "imagegate_verification_duration_seconds_sum {}\nimagegate_verification_duration_seconds_count {}",
            load(&self.verification_latency.sum_micros) as f64 / 1e6,
            load(&self.verification_latency.count)
        );

        header(
            &mut out,
            "imagegate_exec_decisions_total",
            "counter",
            "Execs and executable mappings the backend denied (verdict=\"denied\") or allowed and reported (verdict=\"audit\").",
        );
        if let Ok(decisions) = self.decisions.lock() {
            for ((backend, verdict, hook), count) in decisions.iter() {
                let _ = writeln!(
                    out,
                    "imagegate_exec_decisions_total{{backend=\"{backend}\",verdict=\"{verdict}\",hook=\"{hook}\"}} {count}"
                );
            }
        }

        header(
            &mut out,
            "imagegate_verdict_cache_hits_total",
            "counter",
            "Verdicts answered from the cache (memory or the persisted store).",
        );
        let _ = writeln!(
            out,
            "imagegate_verdict_cache_hits_total {}",
            load(&self.cache_hits)
        );
        header(
            &mut out,
            "imagegate_verdict_cache_misses_total",
            "counter",
            "Verdicts that had to be computed.",
        );
        let _ = writeln!(
            out,
            "imagegate_verdict_cache_misses_total {}",
            load(&self.cache_misses)
        );

        header(
            &mut out,
            "imagegate_registry_errors_total",
            "counter",
            "Registry requests that failed, by kind.",
        );
        let kinds: Vec<(&str, u64)> = REGISTRY_ERROR_KINDS
            .iter()
            .zip(&self.registry_errors)
            .map(|(kind, counter)| (*kind, load(counter)))
            .collect();
        samples(&mut out, "imagegate_registry_errors_total", "kind", &kinds);

        header(
            &mut out,
            "imagegate_layers",
            "gauge",
            "Layers in the enforcement table: verified (a trusted image contains it), audit (only audit-scope images do), writable (container writable layers, judged for drift).",
        );
        samples(
            &mut out,
            "imagegate_layers",
            "state",
            &[
                ("verified", load(&self.layers_verified)),
                ("audit", load(&self.layers_audit)),
                ("writable", load(&self.layers_writable)),
            ],
        );

        header(
            &mut out,
            "imagegate_images",
            "gauge",
            "containerd images tracked, by verdict.",
        );
        samples(
            &mut out,
            "imagegate_images",
            "verdict",
            &[
                ("trusted", load(&self.images_trusted)),
                ("untrusted", load(&self.images_untrusted)),
            ],
        );

        header(
            &mut out,
            "imagegate_image_records",
            "gauge",
            "containerd image records: judged, or uncatalogued (their manifest, config or layers could not be read; they vouch for nothing until a retry succeeds).",
        );
        samples(
            &mut out,
            "imagegate_image_records",
            "state",
            &[
                ("judged", load(&self.records_judged)),
                ("uncatalogued", load(&self.records_uncatalogued)),
            ],
        );
        header(
            &mut out,
            "imagegate_catalog_failures_total",
            "counter",
            "Attempts at cataloguing an image record that failed (each is retried with back-off).",
        );
        let _ = writeln!(
            out,
            "imagegate_catalog_failures_total {}",
            load(&self.catalog_failures)
        );

        for (name, kind, help, value) in [
            (
                "imagegate_verification_deadlines_total",
                "counter",
                "Verifications that ran past their deadline (registry.verify_deadline_seconds): an error verdict each, retried with back-off.",
                load(&self.verification_deadlines),
            ),
            (
                "imagegate_verifications_pending",
                "gauge",
                "Verifications started and not finished (their images are not trusted meanwhile).",
                load(&self.verifications_pending),
            ),
            (
                "imagegate_reload_failures_total",
                "counter",
                "Policy reloads whose new table could not be built; the old table stays and the reload is retried.",
                load(&self.reload_failures),
            ),
            (
                "imagegate_layers_refused_total",
                "counter",
                "Layers the backend's table had no room for; they stay unverified (denied).",
                load(&self.layers_refused),
            ),
            (
                "imagegate_layer_table_full",
                "gauge",
                "1 while the backend's layer table is full: new layers stay unverified (denied), the daemon is ready but degraded.",
                u64::from(self.table_full.load(Ordering::Relaxed)),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }

        header(
            &mut out,
            "imagegate_reconciliations_total",
            "counter",
            "Reconciliations with containerd, by result.",
        );
        samples(
            &mut out,
            "imagegate_reconciliations_total",
            "result",
            &[
                ("ok", load(&self.reconciliations_ok)),
                ("failed", load(&self.reconciliations_failed)),
            ],
        );

        let health = self.health();
        header(
            &mut out,
            "imagegate_ready",
            "gauge",
            "1 when the backend is attached and the last reconciliation succeeded (as /readyz).",
        );
        let _ = writeln!(out, "imagegate_ready {}", u8::from(health.ready));
        if let Some(backend) = self.backend_name() {
            header(
                &mut out,
                "imagegate_backend_info",
                "gauge",
                "The enforcement backend in use.",
            );
            let _ = writeln!(out, "imagegate_backend_info{{backend=\"{backend}\"}} 1");
        }
        if let Some(tuf) = crate::tuf::installed() {
            if let Some(state) = tuf.state() {
                for (name, help, value) in [
                    (
                        "imagegate_public_good_root_fetched_timestamp_seconds",
                        "When the public-good trusted root in use was fetched through TUF (unix seconds).",
                        state.fetched_at,
                    ),
                    (
                        "imagegate_public_good_root_expiry_timestamp_seconds",
                        "When the TUF metadata vouching for the public-good trusted root in use expires (unix seconds); after it, images needing the root get error verdicts until a refresh succeeds.",
                        state.expires,
                    ),
                ] {
                    header(&mut out, name, "gauge", help);
                    let _ = writeln!(out, "{name} {value}");
                }
            }
            header(
                &mut out,
                "imagegate_public_good_root_refresh_failing",
                "gauge",
                "1 while the last TUF refresh of the public-good trusted root failed (the last good root stays in use until it expires).",
            );
            let _ = writeln!(
                out,
                "imagegate_public_good_root_refresh_failing {}",
                u8::from(tuf.last_error().is_some())
            );
        }
        out
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("serving metrics on {listen}")]
pub struct ServeError {
    listen: Listen,
    #[source]
    source: std::io::Error,
}

/// The running endpoint; stops (and removes its socket file) when dropped.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
    socket: Option<PathBuf>,
    /// The bound address (the real port when the configured one was 0).
    pub local: Listen,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Connections served at once per listener; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// Connections served at once to one peer address (TCP): one pod cannot take a listener's
/// whole budget.
const MAX_PER_PEER: usize = 4;
/// A request head larger than this is refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client must send its request head within this time (an idle connection is closed then).
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole exchange (request and response) ends within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/metrics`, `/healthz`, `/readyz`.
    All,
    /// `/healthz` and `/readyz` only: the probes' own listener (`health_listen`), with a budget
    /// no scraper or pod shares.
    Health,
}

/// Connections open per peer address.
#[derive(Default)]
struct Peers(Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in its peer's count; given back when dropped.
struct PeerSlot {
    peers: Arc<Peers>,
    addr: std::net::IpAddr,
}

impl Peers {
    fn enter(self: &Arc<Self>, addr: std::net::IpAddr) -> Option<PeerSlot> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(addr).or_default();
        if *count >= MAX_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            addr,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

impl Server {
    /// Binds `listen` and serves [`global`] (metrics and health) until dropped. Must be called
    /// inside a tokio runtime.
    pub async fn start(listen: Listen) -> Result<Self, ServeError> {
        Self::start_serving(listen, Routes::All).await
    }

    /// Binds `listen` and serves `routes` of [`global`] until dropped.
    pub async fn start_serving(listen: Listen, routes: Routes) -> Result<Self, ServeError> {
        let error = |source| ServeError {
            listen: listen.clone(),
            source,
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        match &listen {
            Listen::Unix(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(error)?;
                }
                let _ = std::fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path).map_err(error)?;
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
                    .map_err(error)?;
                let task = tokio::spawn(async move {
                    loop {
                        if let Ok((stream, _)) = listener.accept().await {
                            spawn_connection(stream, &limit, None, routes);
                        }
                    }
                });
                Ok(Self {
                    task,
                    socket: Some(path.clone()),
                    local: listen,
                })
            }
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
                let local = Listen::Tcp(listener.local_addr().map_err(error)?);
                let peers = Arc::new(Peers::default());
                let task = tokio::spawn(async move {
                    loop {
                        if let Ok((stream, peer)) = listener.accept().await {
                            // Over its peer's limit, the connection is closed at once.
                            let Some(slot) = peers.enter(peer.ip()) else {
                                continue;
                            };
                            spawn_connection(stream, &limit, Some(slot), routes);
                        }
                    }
                });
                Ok(Self {
                    task,
                    socket: None,
                    local,
                })
            }
        }
    }
}

fn spawn_connection<S>(
    stream: S,
    limit: &Arc<tokio::sync::Semaphore>,
    slot: Option<PeerSlot>,
    routes: Routes,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Over the limit, the connection is closed at once rather than queued in memory.
    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, global(), routes)).await;
        drop(permit);
        drop(slot);
    });
}

/// Reads one request head and writes one response.
async fn respond<S>(mut stream: S, metrics: &Metrics, routes: Routes) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(read) => read?,
            // Idle: the connection is closed, its slot freed.
            Err(_) => return Ok(()),
        };
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_REQUEST {
            return write_response(&mut stream, 431, "text/plain", "request too large\n", false)
                .await;
        }
    }
    let request_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|line| String::from_utf8_lossy(line).trim().to_owned())
        .unwrap_or_default();
    let (status, content_type, body, head_only) = route(&request_line, metrics, routes);
    write_response(&mut stream, status, content_type, &body, head_only).await
}

/// (status, content type, body, HEAD) for a request line.
fn route(
    request_line: &str,
    metrics: &Metrics,
    routes: Routes,
) -> (u16, &'static str, String, bool) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return (400, "text/plain", "bad request\n".into(), false);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return (405, "text/plain", "only GET and HEAD\n".into(), false),
    };
    let path = target.split('?').next().unwrap_or(target);
    let text = "text/plain; charset=utf-8";
    match path {
        "/metrics" if routes == Routes::All => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
            head_only,
        ),
        "/healthz" | "/livez" => {
            let health = metrics.health();
            let status = if health.live { 200 } else { 503 };
            (status, text, format!("{}\n", health.detail), head_only)
        }
        "/readyz" => {
            let health = metrics.health();
            let status = if health.ready { 200 } else { 503 };
            (status, text, format!("{}\n", health.detail), head_only)
        }
        _ => (
            404,
            text,
            "not found: /metrics, /healthz, /readyz\n".into(),
            head_only,
        ),
    }
}

async fn write_response<S>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(Listen::parse("off"), Ok(None));
        assert_eq!(
            Listen::parse("/run/imagegate/metrics.sock"),
            Ok(Some(Listen::Unix("/run/imagegate/metrics.sock".into())))
        );
        assert_eq!(
            Listen::parse("127.0.0.1:9464"),
            Ok(Some(Listen::Tcp("127.0.0.1:9464".parse().expect("addr"))))
        );
        assert!(Listen::parse("localhost:9464").is_err());
        assert!(Listen::parse("metrics.sock").is_err());
        assert!(Listen::parse("").is_err());
    }

    #[test]
    fn health_follows_backend_and_reconciliation() {
        let metrics = Metrics::default();
        assert!(!metrics.health().live && !metrics.health().ready);
        metrics.backend_attached("fanotify");
        assert!(metrics.health().live && !metrics.health().ready);
        metrics.reconciled(true);
        assert!(metrics.health().live && metrics.health().ready);
        metrics.reconciled(false);
        assert!(!metrics.health().live && !metrics.health().ready);
        metrics.reconciled(true);
        metrics.stopping();
        assert!(!metrics.health().live && !metrics.health().ready);
    }

    /// Parses the exposition into (series, value), checking every line is a comment or a sample.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            out.insert(series.to_owned(), value.parse().expect("numeric value"));
        }
        out
    }

    #[test]
    fn exposition_counts_what_happened() {
        let metrics = Metrics::default();
        metrics.backend_attached("bpf-lsm");
        metrics.verification(Outcome::Trusted, Duration::from_millis(3));
        metrics.verification(Outcome::Error, Duration::from_secs(20));
        metrics.early_verification(Outcome::Untrusted, Duration::from_millis(40));
        metrics.decision("bpf-lsm", "denied", "mmap");
        metrics.cache_hit();
        metrics.registry_error(&DiscoverError::Timeout { url: "u".into() });
        metrics.catalog_failure();
        metrics.catalog_failure();
        metrics.observe_records(14, 1);
        let text = metrics.render();
        let s = samples(&text);
        assert_eq!(s["imagegate_verifications_total{outcome=\"trusted\"}"], 1.0);
        assert_eq!(
            s["imagegate_verifications_total{outcome=\"untrusted\"}"],
            0.0
        );
        assert_eq!(s["imagegate_verifications_total{outcome=\"error\"}"], 1.0);
        assert_eq!(
            s["imagegate_early_verifications_total{outcome=\"untrusted\"}"],
            1.0
        );
        assert_eq!(
            s["imagegate_early_verifications_total{outcome=\"trusted\"}"],
            0.0
        );
        assert_eq!(
            s["imagegate_verification_duration_seconds_bucket{le=\"0.001\"}"],
            0.0
        );
        assert_eq!(
            s["imagegate_verification_duration_seconds_bucket{le=\"0.005\"}"],
            1.0
        );
        assert_eq!(
            s["imagegate_verification_duration_seconds_bucket{le=\"10\"}"],
            2.0
        );
        assert_eq!(
            s["imagegate_verification_duration_seconds_bucket{le=\"30\"}"],
            3.0
        );
        assert_eq!(
            s["imagegate_verification_duration_seconds_bucket{le=\"+Inf\"}"],
            3.0
        );
        assert_eq!(s["imagegate_verification_duration_seconds_count"], 3.0);
        assert!((s["imagegate_verification_duration_seconds_sum"] - 20.043).abs() < 1e-9);
        assert_eq!(
            s["imagegate_exec_decisions_total{backend=\"bpf-lsm\",verdict=\"denied\",hook=\"mmap\"}"],
            1.0
        );
        assert_eq!(
            s["imagegate_exec_decisions_total{backend=\"bpf-lsm\",verdict=\"denied\",hook=\"exec\"}"],
            0.0
        );
        assert_eq!(s["imagegate_verdict_cache_hits_total"], 1.0);
        assert_eq!(s["imagegate_registry_errors_total{kind=\"timeout\"}"], 1.0);
        assert_eq!(s["imagegate_backend_info{backend=\"bpf-lsm\"}"], 1.0);
        assert_eq!(s["imagegate_catalog_failures_total"], 2.0);
        assert_eq!(s["imagegate_image_records{state=\"judged\"}"], 14.0);
        assert_eq!(s["imagegate_image_records{state=\"uncatalogued\"}"], 1.0);
        assert!(text.contains("# TYPE imagegate_verification_duration_seconds histogram"));
    }

    #[test]
    fn responder_routes_requests() {
        let metrics = Metrics::default();
        assert_eq!(route("GET /metrics HTTP/1.1", &metrics, Routes::All).0, 200);
        assert_eq!(route("GET /healthz HTTP/1.1", &metrics, Routes::All).0, 503);
        metrics.backend_attached("fanotify");
        assert_eq!(route("GET /healthz HTTP/1.1", &metrics, Routes::All).0, 200);
        assert_eq!(route("GET /readyz HTTP/1.0", &metrics, Routes::All).0, 503);
        assert!(route("HEAD /metrics HTTP/1.1", &metrics, Routes::All).3);
        assert_eq!(
            route("POST /metrics HTTP/1.1", &metrics, Routes::All).0,
            405
        );
        assert_eq!(route("GET /nope HTTP/1.1", &metrics, Routes::All).0, 404);
        assert_eq!(route("garbage", &metrics, Routes::All).0, 400);
        assert_eq!(
            route("GET /metrics HTTP/1.1", &metrics, Routes::Health).0,
            404
        );
        assert_eq!(
            route("GET /healthz HTTP/1.1", &metrics, Routes::Health).0,
            200
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_over_tcp_and_bounds_requests() {
        let server = Server::start(Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("bind");
        let Listen::Tcp(addr) = server.local else {
            panic!("tcp")
        };
        let request = |text: &'static [u8]| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.write_all(text).await.expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        let response = request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"), "{response}");
        assert!(response.contains("imagegate_verifications_total{outcome=\"trusted\"}"));
        let response = request(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            response.ends_with("\r\n\r\n"),
            "HEAD has no body: {response}"
        );
        // A request head over the bound is refused without reading the rest.
        let (mut client, server_side) = tokio::io::duplex(64 * 1024);
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        client.write_all(huge.as_bytes()).await.expect("write");
        respond(server_side, &Metrics::default(), Routes::All)
            .await
            .expect("respond");
        let mut response = String::new();
        client.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    }
}
