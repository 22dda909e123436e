//! The fanotify backend: the BPF backend's decisions, made in the daemon from exec permission
//! events, for kernels that do not run BPF LSM programs.
//!
//! A `FAN_CLASS_CONTENT` group gets `FAN_OPEN_EXEC_PERM` (exec and the ELF interpreter) through
//! one `FAN_MARK_FILESYSTEM` mark per file system holding a scope. From 6.5 that mark sees the
//! backing file of every container exec ([`resolve`]); before 6.5 overlayfs hides those opens, so
//! each overlay with a layer in a scope is marked as it appears ([`overlay`]). Decisions come from
//! an in-memory [`policy::Policy`] snapshot, by the reading thread or a worker pool, within a
//! bound ([`engine`]).
//!
//! If the daemon dies, the kernel allows pending and future execs: unlike pinned BPF programs,
//! a fanotify group lives only as long as its process.

pub mod choose;
mod engine;
mod memo;
pub mod overlay;
pub mod policy;
pub mod probe;
pub mod process;
mod resolve;
pub mod sys;
mod watcher;

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use engine::Shared;
use policy::{Policy, Scope};

use super::{ContainerState, Decision, Drift, LayerId, LayerState, Mode, OutsideImage};

/// Default time a decision may take before the mode answers it.
pub const DEFAULT_BOUND: Duration = Duration::from_millis(200);

/// Where container runtimes usually live.
pub const DEFAULT_RUNTIMES: &[&str] = &[
    "/usr/bin/runc",
    "/usr/sbin/runc",
    "/usr/local/bin/runc",
    "/usr/local/sbin/runc",
    "/usr/bin/crun",
];

/// How container execs are made visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Probed at start ([`probe`]): `backing` when an exec through an overlay is reported on
    /// the lower file system (6.5 and later), `overlay` otherwise; by kernel version only when
    /// the probe cannot run.
    Auto,
    /// Only file system marks on the scopes' file systems (events on backing files, 6.5+).
    Backing,
    /// Also mark every overlay with a layer in a scope (before 6.5). On 6.5+ this gives two
    /// events per container exec, both judged alike.
    Overlay,
}

/// Fault injection for tests: decisions about `layer` sleep `duration` first.
#[derive(Clone, Copy, Debug)]
pub struct Stall {
    pub layer: LayerId,
    pub duration: Duration,
}

/// Settings fixed at start.
#[derive(Clone, Debug)]
pub struct FanotifyConfig {
    pub mode: Mode,
    pub drift: Drift,
    /// An event not decided within this is answered by the mode (enforce: deny, audit: allow).
    pub bound: Duration,
    /// Decision threads; 0 picks one per CPU (at least 2, at most 8).
    pub workers: usize,
    pub strategy: Strategy,
    /// Ignore marks for allowed host and verified-layer inodes (off only to measure).
    pub ignore_marks: bool,
    /// The reading thread decides the last event of each read itself instead of handing it to
    /// a worker (off only to measure the hand-off).
    pub decide_in_reader: bool,
    /// Container runtimes (runc) whose every exec first marks the overlays mounted so far
    /// (`overlay` strategy): containerd mounts a rootfs before it runs runc, so the container's
    /// first exec cannot beat the mark. Missing paths are skipped.
    pub runtime_binaries: Vec<PathBuf>,
    #[doc(hidden)]
    pub stall: Option<Stall>,
}

impl Default for FanotifyConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            drift: Drift::Deny,
            bound: DEFAULT_BOUND,
            workers: 0,
            strategy: Strategy::Auto,
            ignore_marks: true,
            decide_in_reader: true,
            runtime_binaries: DEFAULT_RUNTIMES.iter().map(PathBuf::from).collect(),
            stall: None,
        }
    }
}

/// Why the fanotify backend failed.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    #[error("fanotify_init(FAN_CLASS_CONTENT) failed (needs CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")]
    Init {
        #[source]
        source: std::io::Error,
    },
    #[error("marking the file system of {path} for exec permission events")]
    Mark {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no scope {scope} is registered")]
    UnknownScope { scope: LayerId },
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FanotifyStats {
    /// Permission events received.
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
    /// Answered by the mode because no decision came within the bound.
    pub timeouts: u64,
    /// Ignore marks placed (allowed inodes the kernel stops asking about).
    pub ignore_marks: u64,
    pub events_lost: u64,
    /// Sum and maximum of the time from reading an event to answering it: the latency the
    /// backend adds on top of the kernel's round trip.
    pub answer_micros_total: u64,
    pub answer_micros_max: u64,
    /// Events decided by the reader thread itself (no hand-off to a worker).
    pub decided_inline: u64,
    /// Times a decision in the reader took so long that the standby thread read for it.
    pub takeovers: u64,
}

/// The running backend. Dropping it stops the threads and closes the group (the kernel then
/// allows whatever was pending).
pub struct FanotifyBackend {
    shared: Arc<Shared>,
    strategy: Strategy,
    /// How the strategy was chosen (configured, probed, or by kernel version).
    strategy_how: String,
    threads: Vec<JoinHandle<()>>,
}

fn spawn(
    name: &'static str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, FanotifyError> {
    std::thread::Builder::new()
        .name(format!("fanotify-{name}"))
        .spawn(move || {
            sys::raise_thread_priority();
            body();
        })
        .map_err(|source| FanotifyError::Thread { name, source })
}

impl FanotifyBackend {
    /// Creates the group and starts the threads. Nothing is marked until a scope is added.
    pub fn start(config: FanotifyConfig) -> Result<Self, FanotifyError> {
        sys::raise_fd_limit();
        let group = sys::Group::new().map_err(|source| FanotifyError::Init { source })?;
        let probe::StrategyChoice {
            strategy,
            how: strategy_how,
        } = match config.strategy {
            Strategy::Auto => probe::choose_strategy(),
            chosen => probe::StrategyChoice {
                strategy: chosen,
                how: "configured".to_owned(),
            },
        };
        let shared = Arc::new(Shared::new(
            group,
            Policy::new(
                config.mode,
                config.drift,
                crate::enforce::OutsideImage::Allow,
            ),
            config.bound,
            (config.ignore_marks, config.decide_in_reader),
            strategy == Strategy::Overlay,
            config.stall,
            config.runtime_binaries.clone(),
        ));
        watcher::refresh_runtimes(&shared);
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
        } else {
            config.workers
        };
        let (work, queue) = mpsc::sync_channel(4096);
        let queue = Arc::new(Mutex::new(queue));
        let mut backend = Self {
            shared: Arc::clone(&shared),
            strategy,
            strategy_how,
            threads: Vec::new(),
        };
        for _ in 0..workers {
            let (shared, queue) = (Arc::clone(&shared), Arc::clone(&queue));
            backend
                .threads
                .push(spawn("worker", move || engine::worker(&shared, &queue))?);
        }
        let timer_shared = Arc::clone(&shared);
        backend
            .threads
            .push(spawn("timer", move || engine::timer(&timer_shared))?);
        let standby_shared = Arc::clone(&shared);
        let standby_work = work.clone();
        backend.threads.push(spawn("standby", move || {
            engine::standby(&standby_shared, &standby_work);
        })?);
        let reader_shared = Arc::clone(&shared);
        backend.threads.push(spawn("reader", move || {
            engine::reader(&reader_shared, &work);
        })?);
        if strategy == Strategy::Overlay {
            let watcher_shared = Arc::clone(&shared);
            backend.threads.push(spawn("mounts", move || {
                watcher::mount_watcher(&watcher_shared);
            })?);
        }
        tracing::info!(
            ?strategy,
            strategy_chosen_by = %backend.strategy_how,
            workers,
            bound_ms = config.bound.as_millis() as u64,
            "fanotify backend started"
        );
        Ok(backend)
    }

    /// The strategy in use (never `Auto`).
    #[must_use]
    pub const fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// How [`FanotifyBackend::strategy`] was chosen: configured, probed, or by kernel version.
    #[must_use]
    pub fn strategy_how(&self) -> &str {
        &self.strategy_how
    }

    #[must_use]
    pub fn stats(&self) -> FanotifyStats {
        self.shared.snapshot_stats()
    }

    /// Overlays currently marked (kernels before 6.5).
    #[must_use]
    pub fn marked_overlays(&self) -> usize {
        self.shared.policy().overlays.len()
    }

    /// Re-reads the mount table now instead of waiting for the watcher.
    pub fn rescan_overlays(&self) {
        watcher::rescan_overlays(&self.shared, false);
    }

    /// Drops every ignore mark: the next exec of every file is judged again.
    pub fn flush_ignore_marks(&self) {
        self.shared.revoke_ignore_marks();
    }

    fn scope_for(path: &Path) -> Result<Scope, FanotifyError> {
        let io = |source| FanotifyError::Io {
            path: path.to_owned(),
            source,
        };
        let id = LayerId::of(path).map_err(io)?;
        let scope_dir = sys::open_dir(path).map_err(io)?;
        // Report paths through a mount of the whole file system when there is one, so host files
        // outside a bind-mounted scope still get a path that leads back to them.
        let whole = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| {
                overlay::parse_mountinfo(&text)
                    .into_iter()
                    .rev()
                    .find(|mount| mount.dev == id.dev && mount.root == Path::new("/"))
            })
            .and_then(|mount| sys::open_dir(&mount.mount_point).ok());
        let mount_fd = whole.unwrap_or(scope_dir.try_clone().map_err(io)?);
        let prefix = sys::reopen_via_mount(scope_dir.as_fd(), mount_fd.as_fd())
            .and_then(|reopened| sys::fd_path(reopened.as_fd()))
            .or_else(|_| std::fs::canonicalize(path))
            .map_err(io)?;
        Ok(Scope {
            id,
            prefix,
            mount_fd: Arc::new(mount_fd),
            generations: crate::enforce::layer::has_generations(path).map_err(io)?,
        })
    }
}

impl Drop for FanotifyBackend {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.wake_standby(false);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl super::Backend for FanotifyBackend {
    type Error = FanotifyError;

    fn name(&self) -> &'static str {
        "fanotify"
    }

    fn set_mode(&mut self, mode: Mode) -> Result<(), FanotifyError> {
        // Ignore marks only ever cover plain allows, which do not depend on the mode.
        self.shared.update(false, |policy| policy.mode = mode);
        Ok(())
    }

    fn set_drift(&mut self, drift: Drift) -> Result<(), FanotifyError> {
        // Allowed drift is never cached, so tightening it needs no flush.
        self.shared.update(false, |policy| policy.drift = drift);
        Ok(())
    }

    fn set_outside_image(&mut self, outside: OutsideImage) -> Result<(), FanotifyError> {
        // Ignore marks never cover container decisions, so tightening needs no flush.
        self.shared
            .update(false, |policy| policy.outside_image = outside);
        Ok(())
    }

    fn set_container(&mut self, root: LayerId, state: ContainerState) -> Result<(), FanotifyError> {
        self.shared.update(false, |policy| {
            policy.containers.insert(root, state);
        });
        Ok(())
    }

    fn remove_container(&mut self, root: LayerId) -> Result<(), FanotifyError> {
        if self.shared.policy().containers.contains_key(&root) {
            self.shared.update(false, |policy| {
                policy.containers.remove(&root);
            });
        }
        Ok(())
    }

    fn containers(&self) -> Result<Vec<(LayerId, ContainerState)>, FanotifyError> {
        Ok(self
            .shared
            .policy()
            .containers
            .iter()
            .map(|(id, trust)| (*id, *trust))
            .collect())
    }

    fn add_scope(&mut self, snapshots_dir: &Path) -> Result<LayerId, FanotifyError> {
        let scope = Self::scope_for(snapshots_dir)?;
        let id = scope.id;
        let policy = self.shared.policy();
        if policy.scopes.iter().any(|known| known.id == id) {
            return Ok(id);
        }
        let first_on_fs = policy.scopes_on(id.dev).next().is_none();
        let mount_fd = Arc::clone(&scope.mount_fd);
        tracing::info!(scope = %snapshots_dir.display(), prefix = %scope.prefix.display(), %id, "judging layers under scope");
        // Files of the new scope may carry ignore marks from when they were host files.
        self.shared
            .update(true, |policy| policy.scopes.push(Arc::new(scope)));
        if first_on_fs {
            if let Err(source) = self
                .shared
                .group
                .mark_filesystem(true, sys::MarkAt::Fd(mount_fd.as_fd()))
            {
                self.shared
                    .update(false, |policy| policy.scopes.retain(|scope| scope.id != id));
                return Err(FanotifyError::Mark {
                    path: snapshots_dir.to_owned(),
                    source,
                });
            }
        }
        watcher::rescan_overlays(&self.shared, true);
        // A root seen before its scope was judged as the host's; a file as out of scope.
        self.shared.roots.clear();
        self.shared.files.clear();
        Ok(id)
    }

    fn remove_scope(&mut self, id: LayerId) -> Result<(), FanotifyError> {
        let policy = self.shared.policy();
        let Some(scope) = policy.scopes.iter().find(|scope| scope.id == id).cloned() else {
            return Err(FanotifyError::UnknownScope { scope: id });
        };
        self.shared
            .update(false, |policy| policy.scopes.retain(|scope| scope.id != id));
        if self.shared.policy().scopes_on(id.dev).next().is_none() {
            self.shared
                .group
                .mark_filesystem(false, sys::MarkAt::Fd(scope.mount_fd.as_fd()))
                .map_err(|source| FanotifyError::Mark {
                    path: scope.prefix.clone(),
                    source,
                })?;
        }
        watcher::rescan_overlays(&self.shared, true);
        self.shared.roots.clear();
        self.shared.files.clear();
        Ok(())
    }

    fn set_layer(&mut self, layer: LayerId, state: LayerState) -> Result<(), FanotifyError> {
        let before = self.shared.policy().layers.get(&layer).copied();
        // Verified → writable can deny what was allowed (and cached); anything → verified cannot.
        let revoke = before == Some(LayerState::Verified) && state != LayerState::Verified;
        self.shared.update(revoke, |policy| {
            policy.layers.insert(layer, state);
        });
        Ok(())
    }

    fn remove_layer(&mut self, layer: LayerId) -> Result<(), FanotifyError> {
        let before = self.shared.policy().layers.get(&layer).copied();
        if before.is_none() {
            return Ok(());
        }
        // Its files may carry ignore marks from when it was verified.
        self.shared
            .update(before == Some(LayerState::Verified), |policy| {
                policy.layers.remove(&layer);
            });
        Ok(())
    }

    fn apply_layers(
        &mut self,
        changes: &[(LayerId, Option<LayerState>)],
    ) -> Result<(), FanotifyError> {
        if changes.is_empty() {
            return Ok(());
        }
        // One copy of the table for the batch; ignore marks are revoked if any layer stops
        // being verified (the same rule as set_layer/remove_layer, applied once).
        let current = self.shared.policy();
        let revoke = changes.iter().any(|(layer, state)| {
            current.layers.get(layer) == Some(&LayerState::Verified)
                && *state != Some(LayerState::Verified)
        });
        self.shared.update(revoke, |policy| {
            for (layer, state) in changes {
                match state {
                    Some(state) => {
                        policy.layers.insert(*layer, *state);
                    }
                    None => {
                        policy.layers.remove(layer);
                    }
                }
            }
        });
        Ok(())
    }

    fn drain_events(&mut self) -> Vec<Decision> {
        self.shared.drain_events()
    }

    fn layers(&self) -> Result<Vec<(LayerId, LayerState)>, FanotifyError> {
        Ok(self
            .shared
            .policy()
            .layers
            .iter()
            .map(|(id, state)| (*id, *state))
            .collect())
    }
}
