//! `imagegate daemon`: load and check everything, choose and prove the backend, then serve.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use imagegate::enforce::{bpf::BpfBackend, selftest};

pub fn run_daemon(config_path: &Path) -> Result<()> {
    use imagegate::{
        config::{BackendChoice, Config},
        discover::{Credentials, DiscoveryConfig, RegistryClient},
        verdict::VerdictStore,
    };
    // Everything is checked before anything is loaded: a partly understood configuration or
    // policy never starts the daemon.
    let config = Config::load(config_path).context("loading the configuration")?;
    let policy = imagegate::policy::Policy::load(&config.policy).context("loading the policy")?;
    let credentials = match &config.registry.docker_config {
        Some(path) => Credentials::from_docker_config(path)
            .with_context(|| format!("reading credentials from {}", path.display()))?,
        None => Credentials::default(),
    };
    let client = RegistryClient::new(DiscoveryConfig {
        credentials,
        insecure_registries: config.registry.insecure.clone(),
        request_timeout: Duration::from_secs(config.registry.timeout_seconds),
        ..DiscoveryConfig::default()
    })
    .context("setting up the registry client")?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    // A store held by another process: an earlier daemon killed a moment ago can leave a child
    // (its fanotify probe's, between fork and exec) holding the file's lock for a short while.
    let store_path = config.state_dir.join("verdicts.redb");
    let started = std::time::Instant::now();
    let (store, _set_aside) = loop {
        match VerdictStore::open_or_set_aside(&store_path) {
            Err(imagegate::verdict::StoreError::InUse { .. })
                if started.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => break result.context("opening the verdict store")?,
        }
    };
    let event_log = match &config.event_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the event log {}", path.display()))?,
        ),
        None => None,
    };

    let kind = match config.backend {
        BackendChoice::BpfLsm => imagegate::enforce::BackendKind::BpfLsm,
        BackendChoice::Fanotify => imagegate::enforce::BackendKind::Fanotify,
        BackendChoice::Auto => {
            imagegate::enforce::choose()
                .context("no enforcement backend works on this kernel")?
                .backend
        }
    };
    let snapshots = config.containerd.snapshots_dir();
    std::fs::create_dir_all(&snapshots)
        .with_context(|| format!("creating {}", snapshots.display()))?;
    let context = DaemonContext {
        policy,
        client,
        store,
        event_log,
        config: config.clone(),
    };
    match kind {
        imagegate::enforce::BackendKind::BpfLsm => {
            let mut backend =
                BpfBackend::install(&config.pin_dir).context("installing the BPF LSM backend")?;
            // On the scope's own file system where the daemon may write (its state directory
            // usually is on it), else the runtime directory (docs/enforcement.md).
            let scratch = selftest::scratch_for(
                &snapshots,
                &[
                    config.state_dir.join("selftest"),
                    PathBuf::from("/run/imagegate/selftest"),
                ],
            )
            .context("self-test impossible: refusing to claim enforcement")?;
            let report = selftest::run(&mut backend, &scratch)
                .context("self-test failed: refusing to claim enforcement")?;
            tracing::info!(
                self_test_event = %serde_json::to_string(&report.deny_event).unwrap_or_default(),
                startup = ?backend.startup(),
                self_test_dir = %scratch.display(),
                "BPF LSM backend enforcing; self-test denied an exec from an unverified layer"
            );
            serve_with(backend, context)
        }
        imagegate::enforce::BackendKind::Fanotify => {
            let backend = imagegate::enforce::fanotify::FanotifyBackend::start(
                imagegate::enforce::fanotify::FanotifyConfig {
                    mode: config.mode,
                    drift: config.drift,
                    ..Default::default()
                },
            )
            .context("starting the fanotify backend")?;
            tracing::info!(
                "fanotify backend enforcing (exec only; executable mappings are not covered)"
            );
            serve_with(backend, context)
        }
    }
}

/// What the daemon needs besides its backend.
struct DaemonContext {
    policy: imagegate::policy::Policy,
    client: imagegate::discover::RegistryClient,
    store: imagegate::verdict::VerdictStore,
    event_log: Option<std::fs::File>,
    config: imagegate::config::Config,
}

fn serve_with<B: imagegate::enforce::Backend>(
    mut backend: B,
    context: DaemonContext,
) -> Result<()> {
    use imagegate::daemon::{serve, Daemon, Verifier};
    let DaemonContext {
        policy,
        client,
        store,
        event_log,
        config,
    } = context;
    let name = backend.name();
    backend
        .set_mode(config.mode)
        .map_err(|e| anyhow::anyhow!("{name}: setting the mode: {e}"))?;
    backend
        .set_drift(config.drift)
        .map_err(|e| anyhow::anyhow!("{name}: setting drift: {e}"))?;
    backend
        .set_outside_image(config.outside_image)
        .map_err(|e| anyhow::anyhow!("{name}: setting outside_image: {e}"))?;
    let snapshots = config.containerd.snapshots_dir();
    backend
        .add_scope(&snapshots)
        .map_err(|e| anyhow::anyhow!("{name}: adding scope {}: {e}", snapshots.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Metrics and health first: probes see "backend attached, not ready" while containerd
        // is awaited and the first reconciliation runs.
        let _metrics = match imagegate::metrics::Listen::parse(&config.metrics_listen)
            .map_err(anyhow::Error::msg)?
        {
            Some(listen) => {
                let server = imagegate::metrics::Server::start(listen).await?;
                tracing::info!(listen = %server.local, "serving metrics and health");
                Some(server)
            }
            None => None,
        };
        let _health = match imagegate::metrics::Listen::parse(&config.health_listen)
            .map_err(anyhow::Error::msg)?
        {
            Some(listen) => {
                let server = imagegate::metrics::Server::start_serving(
                    listen,
                    imagegate::metrics::Routes::Health,
                )
                .await?;
                tracing::info!(listen = %server.local, "serving health on its own listener");
                Some(server)
            }
            None => None,
        };
        imagegate::metrics::global().backend_attached(name);
        // The public-good trusted root through TUF: the cached one at once, refreshed in the
        // background while the policy names it.
        let tuf = imagegate::tuf::start(&config, policy.uses_public_good());
        // Verdicts are the policy's under the root in use: a new root, or its expiry, re-judges.
        let policy = policy.under_public_good_root(tuf.usable_root().as_deref());
        let containerd = loop {
            match imagegate::catalog::Containerd::connect(&config.containerd.socket).await {
                Ok(containerd) => break containerd,
                Err(error) => {
                    tracing::warn!(error = %imagegate::telemetry::error_chain(&error), "waiting for containerd");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let verifier = Verifier {
            policy: std::sync::Arc::new(policy),
            client: std::sync::Arc::new(client),
            cache: std::sync::Arc::new(imagegate::verdict::VerdictCache::new(Some(store))),
        };
        // Verdicts of an earlier policy are of no use under this one.
        let removed = verifier.cache.keep_only_policy(&verifier.policy.hash).await;
        if removed > 0 {
            tracing::info!(removed, "verdicts of other policies forgotten");
        }
        let mut daemon = Daemon::new(backend, verifier, containerd);
        daemon.set_verify_limits(imagegate::daemon::verifying::VerifyLimits {
            deadline: Duration::from_secs(config.registry.verify_deadline_seconds.max(1)),
            per_registry: config.registry.concurrency_per_registry.max(1),
            ..imagegate::daemon::verifying::VerifyLimits::default()
        });
        daemon.settings = Some((config.mode, config.drift));
        daemon.watch_content(imagegate::catalog::content_watch::blob_dir(
            &config.containerd.root,
        ));
        serve::serve(
            daemon,
            serve::Outputs {
                event_log,
                status_socket: config.status_socket.clone(),
                verify_socket: config.verify_socket.clone(),
                policy_path: config.policy.clone(),
            },
        )
        .await
        .map_err(anyhow::Error::from)
    })?;
    Ok(())
}
