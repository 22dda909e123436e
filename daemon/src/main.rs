//! The `imagegate` binary: one command with subcommands.

mod offline_verify;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use imagegate::{
    doctor,
    enforce::{
        bpf::{self, BpfBackend},
        selftest, Drift, LayerId, LayerState, Mode,
    },
    telemetry,
};

/// Verify container images' signatures and enforce the verdict in the kernel.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this kernel supports: BTF, BPF LSM, program load, overlayfs, fanotify.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Where the BPF backend pins its programs and maps.
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// containerd's configuration, read to tell whether pulls reach imagegate's verifier.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        containerd_config: PathBuf,
        /// The containerd binary whose version is checked (2.x has the verifier hook).
        #[arg(long, default_value = "containerd")]
        containerd: PathBuf,
    },
    /// Manage the BPF LSM enforcement backend directly (the daemon does this for you).
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Run the daemon: follow containerd, verify images, keep the kernel's layer table true.
    Daemon {
        /// Configuration file.
        #[arg(long, default_value = imagegate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show the running daemon's state: backend, images by verdict, layers, events.
    Status {
        /// The daemon's status socket.
        #[arg(long, default_value = "/run/imagegate/status.sock")]
        socket: PathBuf,
    },
    /// Check an image against the policy without the daemon: resolve it in its registry, find
    /// its signatures and verify them. Exit code 0 trusted, 1 untrusted, 2 error.
    Verify {
        /// Image reference, by tag or digest.
        image: String,
        /// Policy file (TOML, or containers-policy.json by its .json extension).
        #[arg(long, default_value = "/etc/imagegate/policy.toml")]
        policy: PathBuf,
        /// A registry reached over plain HTTP (host:port), repeatable.
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// docker config.json with registry credentials.
        #[arg(long)]
        docker_config: Option<PathBuf>,
        /// Take insecure registries and credentials from this daemon configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check a configuration file, or print the configuration reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// containerd 2.x's image verifier (its `bindir` plugin runs it before each pull): answers
    /// with the daemon's verdict on `-name REF -digest DIGEST` (the OCI descriptor on stdin),
    /// asking the running daemon on its `verify_socket`, or judging in process when none
    /// listens. Exit 0 admits; otherwise stdout's one line is the reason containerd reports.
    /// Also `--config FILE` (default: `IMAGEGATE_CONFIG`, else /etc/imagegate/imagegate.toml)
    /// and `--timeout-seconds N` (default 8, under containerd's 10 s). The `imagegate` binary
    /// itself, called with `-name` first (a symlink in containerd's verifier `bin_dir`), runs
    /// this. See docs/containerd.md.
    #[command(disable_help_flag = true)]
    ContainerdVerifier {
        /// `-name REF -digest DIGEST -stdin-media-type TYPE [--config FILE] [--timeout-seconds N]`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Verify a detached cosign signature offline (cosign's flag names). Exit 0/1/2.
    VerifySignature(offline_verify::SignatureArgs),
    /// Verify a sigstore bundle offline (cosign's flag names). Exit 0/1/2.
    VerifyBundle(offline_verify::BundleArgs),
}

/// How a verification result is printed.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load a configuration file and the policy (and credentials) it names, as the daemon
    /// would. Exit 0 when everything loads, 2 with `file:line: field: message` otherwise.
    Check {
        #[arg(default_value = imagegate::config::DEFAULT_PATH)]
        file: PathBuf,
    },
    /// Print the configuration reference (docs/config.md) as Markdown.
    Reference,
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Load, attach and pin the programs (or re-open existing pins), then apply settings.
    Install {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Enforcement mode to set.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Drift policy to set.
        #[arg(long, value_enum)]
        drift: Option<Drift>,
        /// What trusted containers may execute from outside their image (default on a fresh
        /// install: allow).
        #[arg(long, value_enum)]
        outside_image: Option<imagegate::enforce::OutsideImage>,
        /// A snapshotter `snapshots` directory to judge (repeatable).
        #[arg(long)]
        scope: Vec<PathBuf>,
        /// Scratch directory for the self-test that runs before enforcement is claimed.
        #[arg(long, default_value = "/run/imagegate/selftest")]
        self_test_dir: PathBuf,
        /// Do not run the self-test (enforcement is then unproven).
        #[arg(long)]
        skip_self_test: bool,
        /// Stay running and print decision events as JSON lines until killed.
        #[arg(long)]
        hold: bool,
    },
    /// Detach the programs and remove all pins.
    Uninstall {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Show settings, scopes, layers and counters.
    Status {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Mark a layer directory (`snapshots/<id>/fs`) verified, writable or audit-only.
    AddLayer {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        dir: PathBuf,
        /// What the layer is.
        #[arg(long, value_enum, default_value = "verified")]
        state: LayerStateArg,
    },
    /// Forget a layer directory: its files are unverified again.
    RemoveLayer {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        dir: PathBuf,
    },
    /// Record a container by its root's writable layer directory (`snapshots/<id>/fs`).
    SetContainer {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        dir: PathBuf,
        /// The container's image's trust.
        #[arg(long, value_enum)]
        trust: imagegate::enforce::ContainerTrust,
        /// What it may execute from outside its image, overriding the global setting.
        #[arg(long, value_enum)]
        outside_image: Option<imagegate::enforce::OutsideImage>,
    },
    /// Forget a container root: its processes count as an unjudged (untrusted) container.
    RemoveContainer {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        dir: PathBuf,
    },
    /// Print queued decision events as JSON lines.
    Events {
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Keep printing for this many seconds.
        #[arg(long, default_value_t = 0)]
        follow_seconds: u64,
    },
}

/// `kernel add-layer --state`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LayerStateArg {
    /// A trusted image contains it.
    Verified,
    /// A container's writable layer (exec from it is drift).
    Writable,
    /// Allowed and reported whatever the mode.
    Audit,
}

fn main() {
    // containerd's image verifier hook runs the binary itself with `-name REF ...`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if imagegate::pullgate::is_containerd_call(&args) {
        std::process::exit(imagegate::pullgate::run_verifier(&args));
    }
    let cli = Cli::parse();
    match &cli.command {
        // The configuration chooses the daemon's log format and filter; one that does not load
        // is reported (and refused) by the daemon itself.
        Command::Daemon { config } => match imagegate::config::Config::load(config) {
            Ok(config) => telemetry::init_with(config.log_format, &config.log_level),
            Err(_) => telemetry::init(),
        },
        // The verifier's stdout is its answer to containerd; it logs nothing.
        Command::ContainerdVerifier { .. } => {}
        _ => telemetry::init(),
    }
    if let Err(error) = run(cli) {
        eprintln!("imagegate: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor {
            json,
            pin_dir,
            containerd_config,
            containerd,
        } => {
            let mut checks = doctor::run(&pin_dir);
            checks.push(doctor::pull_verifier(&containerd, &containerd_config));
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for check in &checks {
                    println!(
                        "{:<26} {:<4} {}",
                        check.capability,
                        if check.ok { "yes" } else { "no" },
                        check.detail
                    );
                }
            }
            Ok(())
        }
        Command::Kernel(command) => kernel(command),
        Command::Daemon { config } => run_daemon(&config),
        Command::Status { socket } => {
            let mut stream =
                std::os::unix::net::UnixStream::connect(&socket).with_context(|| {
                    format!(
                        "connecting to {} (is the daemon running?)",
                        socket.display()
                    )
                })?;
            let mut body = String::new();
            std::io::Read::read_to_string(&mut stream, &mut body)?;
            println!("{body}");
            Ok(())
        }
        Command::Verify {
            image,
            policy,
            mut insecure_registry,
            mut docker_config,
            config,
            output,
        } => {
            if let Some(path) = config {
                let config =
                    imagegate::config::Config::load(&path).context("loading the configuration")?;
                insecure_registry.extend(config.registry.insecure);
                docker_config = docker_config.or(config.registry.docker_config);
            }
            exit_with(verify(
                &image,
                &policy,
                insecure_registry,
                docker_config.as_deref(),
                matches!(output, Output::Json),
            ))
        }
        Command::Config(ConfigCommand::Check { file }) => exit_with(config_check(&file)),
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", imagegate::config::reference_markdown());
            Ok(())
        }
        Command::ContainerdVerifier { args } => {
            std::process::exit(imagegate::pullgate::run_verifier(&args))
        }
        Command::VerifySignature(args) => exit_with(offline_verify::signature(&args)),
        Command::VerifyBundle(args) => exit_with(offline_verify::bundle(&args)),
    }
}

/// Exit 0/1 as the verification decided; 2 when it could not be checked at all.
fn exit_with(result: Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("imagegate: {error:#}");
            std::process::exit(2);
        }
    }
}

/// `imagegate config check`: everything the daemon loads before it starts, loaded the same way.
fn config_check(file: &Path) -> Result<i32> {
    let config = imagegate::config::Config::load(file)?;
    let policy = imagegate::policy::Policy::load(&config.policy)?;
    if let Some(path) = &config.registry.docker_config {
        imagegate::discover::Credentials::from_docker_config(path)
            .with_context(|| format!("{}: registry.docker_config", file.display()))?;
    }
    println!(
        "{}: ok (mode {}, backend {}, metrics {})\n{}: ok (policy {})",
        file.display(),
        serde_json::to_value(config.mode)?.as_str().unwrap_or("?"),
        serde_json::to_value(config.backend)?
            .as_str()
            .unwrap_or("?"),
        config.metrics_listen,
        config.policy.display(),
        policy.hash,
    );
    Ok(0)
}

fn run_daemon(config_path: &Path) -> Result<()> {
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

fn verify(
    image: &str,
    policy_path: &Path,
    insecure_registries: Vec<String>,
    docker_config: Option<&Path>,
    json: bool,
) -> Result<i32> {
    use imagegate::discover::{Credentials, DiscoveryConfig, RegistryClient};
    let policy = imagegate::policy::Policy::load(policy_path).context("loading the policy")?;
    let credentials = match docker_config {
        Some(path) => Credentials::from_docker_config(path)
            .with_context(|| format!("reading credentials from {}", path.display()))?,
        None => Credentials::default(),
    };
    let client = RegistryClient::new(DiscoveryConfig {
        credentials,
        insecure_registries,
        ..DiscoveryConfig::default()
    })
    .context("setting up the registry client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let verdict = runtime.block_on(imagegate::discover::verify_image(
        &client,
        &policy,
        None,
        image,
        &imagegate::oci::host_platform(),
    ));
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print!("{verdict}");
    }
    std::io::stdout().flush()?;
    Ok(verdict.exit_code())
}

fn open(pin_dir: &Path) -> Result<BpfBackend> {
    if !bpf::installed(pin_dir) {
        bail!(
            "the BPF backend is not installed under {} (imagegate kernel install)",
            pin_dir.display()
        );
    }
    BpfBackend::open(pin_dir, bpf::Startup::Reattached).context("opening the pinned BPF backend")
}

fn kernel(command: KernelCommand) -> Result<()> {
    match command {
        KernelCommand::Install {
            pin_dir,
            mode,
            drift,
            outside_image,
            scope,
            self_test_dir,
            skip_self_test,
            hold,
        } => {
            let mut backend =
                BpfBackend::install(&pin_dir).context("installing the BPF LSM backend")?;
            tracing::info!(startup = ?backend.startup(), pin_dir = %pin_dir.display(), "BPF LSM backend ready");
            if let Some(mode) = mode {
                backend.set_mode(mode)?;
            }
            if let Some(drift) = drift {
                backend.set_drift(drift)?;
            }
            if let Some(outside) = outside_image {
                backend.set_outside_image(outside)?;
            } else if backend.startup() == imagegate::enforce::bpf::Startup::Loaded {
                // A fresh settings entry reads as deny; the documented default is allow.
                backend.set_outside_image(imagegate::enforce::OutsideImage::Allow)?;
            }
            for dir in &scope {
                let id = backend
                    .add_scope(dir)
                    .with_context(|| format!("adding scope {}", dir.display()))?;
                tracing::info!(scope = %dir.display(), id = %id, "judging layers under scope");
            }
            if skip_self_test {
                tracing::warn!("self-test skipped: enforcement is unproven");
            } else {
                let report = selftest::run(&mut backend, &self_test_dir)
                    .context("self-test failed: not enforcing")?;
                tracing::info!(
                    self_test_event = %serde_json::to_string(&report.deny_event).unwrap_or_default(),
                    "self-test passed: exec from an unverified layer was denied"
                );
                print_events(&report.other_events)?;
            }
            println!("installed ({:?})", backend.startup());
            std::io::stdout().flush()?;
            if hold {
                loop {
                    print_events(&backend.drain_events())?;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(())
        }
        KernelCommand::Uninstall { pin_dir } => {
            BpfBackend::uninstall(&pin_dir).context("uninstalling the BPF backend")?;
            println!("uninstalled");
            Ok(())
        }
        KernelCommand::Status { pin_dir } => {
            let backend = open(&pin_dir)?;
            let (mode, drift) = backend.settings()?;
            let status = serde_json::json!({
                "pin_dir": pin_dir,
                "mode": mode,
                "drift": drift,
                "scopes": backend.scopes()?.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "layers": backend.layers()?.iter().map(|(id, state)| serde_json::json!({"layer": id.to_string(), "state": state})).collect::<Vec<_>>(),
                "stats": backend.stats()?,
            });
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        KernelCommand::AddLayer {
            pin_dir,
            dir,
            state,
        } => {
            let mut backend = open(&pin_dir)?;
            let id = LayerId::of(&dir).with_context(|| format!("stat {}", dir.display()))?;
            backend.set_layer(
                id,
                match state {
                    LayerStateArg::Verified => LayerState::Verified,
                    LayerStateArg::Writable => LayerState::Writable,
                    LayerStateArg::Audit => LayerState::Audit,
                },
            )?;
            println!("{id}");
            Ok(())
        }
        KernelCommand::SetContainer {
            pin_dir,
            dir,
            trust,
            outside_image,
        } => {
            let mut backend = open(&pin_dir)?;
            let id = LayerId::of(&dir).with_context(|| format!("stat {}", dir.display()))?;
            backend.set_container(
                id,
                imagegate::enforce::ContainerState {
                    trust,
                    outside_image,
                },
            )?;
            println!("{id}");
            Ok(())
        }
        KernelCommand::RemoveContainer { pin_dir, dir } => {
            let mut backend = open(&pin_dir)?;
            let id = LayerId::of(&dir).with_context(|| format!("stat {}", dir.display()))?;
            backend.remove_container(id)?;
            println!("{id}");
            Ok(())
        }
        KernelCommand::RemoveLayer { pin_dir, dir } => {
            let mut backend = open(&pin_dir)?;
            let id = LayerId::of(&dir).with_context(|| format!("stat {}", dir.display()))?;
            backend.remove_layer(id)?;
            println!("{id}");
            Ok(())
        }
        KernelCommand::Events {
            pin_dir,
            follow_seconds,
        } => {
            let mut backend = open(&pin_dir)?;
            let until = Instant::now() + Duration::from_secs(follow_seconds);
            loop {
                print_events(&backend.drain_events())?;
                if Instant::now() >= until {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn print_events(events: &[imagegate::enforce::Decision]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
