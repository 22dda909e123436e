//! `imagegate kernel`: the BPF LSM backend driven by hand (the daemon does this for you).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use imagegate::enforce::{
    bpf::{self, BpfBackend},
    selftest, Drift, LayerId, LayerState, Mode,
};

#[derive(Subcommand)]
pub enum KernelCommand {
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
pub enum LayerStateArg {
    /// A trusted image contains it.
    Verified,
    /// A container's writable layer (exec from it is drift).
    Writable,
    /// Allowed and reported whatever the mode.
    Audit,
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

pub fn kernel(command: KernelCommand) -> Result<()> {
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
