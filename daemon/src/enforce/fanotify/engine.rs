//! The running backend: one reader thread takes events off the group, a worker pool decides
//! them from the in-memory policy, and a timer answers, by the mode, any event still pending
//! at its deadline. Every event is answered exactly once (`Pending::answered`), and its fd stays
//! open until nobody holds the event, so a late answer can never hit a reused fd number.

use std::{
    collections::VecDeque,
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex, PoisonError, RwLock, Weak,
    },
    time::{Duration, Instant, SystemTime},
};

use imagegate_common::kernel_dev;

use super::{
    policy::{Location, Policy, Verdict, TIMEOUT},
    process::{Root, Roots},
    resolve, sys, FanotifyStats, Stall,
};
use crate::enforce::{event::reason_name, Decision, LayerId, Mode};

/// overlayfs's `f_type`.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
/// Decision events kept for `drain_events`; older ones are counted as lost.
const EVENT_CAPACITY: usize = 65_536;

/// A permission event waiting for its answer.
pub struct Pending {
    fd: OwnedFd,
    pid: i32,
    answered: AtomicBool,
    /// When the reader took it off the group: decision latency is measured from here.
    received: Instant,
    /// A container runtime's exec, held while the mounts are rescanned: a host binary, so the
    /// bound allows it (denying runc would stop every container; allowing only reopens the
    /// window the hold narrows).
    runtime: AtomicBool,
}

/// State shared by the threads and the control side.
pub struct Shared {
    pub group: sys::Group,
    policy: RwLock<Arc<Policy>>,
    /// Bumped after every change that can turn an allow into a deny; ignore marks placed by a
    /// decision made under an older generation are removed (see `Worker::cache`).
    generation: AtomicU64,
    events: Mutex<VecDeque<Decision>>,
    pub stats: Counters,
    pub stop: AtomicBool,
    pub bound: Duration,
    pub ignore_marks: bool,
    /// Whether scoped overlays are marked (kernels before 6.5).
    pub overlay_marks: bool,
    pub stall: Option<Stall>,
    /// Container runtime binaries whose exec rescans the mounts (overlay marks only).
    pub runtime_paths: Vec<std::path::PathBuf>,
    timer: Mutex<VecDeque<(Instant, Weak<Pending>)>>,
    timer_wake: Condvar,
    /// Serialises overlay rescans (they do I/O; decisions never take it) and remembers the
    /// mount points of overlays found to have no layer in a scope, so they are not re-derived on
    /// every mount change.
    pub rescan: Mutex<std::collections::HashMap<u64, Vec<(std::path::PathBuf, String)>>>,
    /// Which container each asking process's root is.
    pub roots: Roots,
    /// Which layer each judged file is in, by file handle.
    pub files: resolve::Remembered,
    /// Whether an unreadable process root was already reported (the daemon does not see the
    /// host's PID namespace).
    warned_unreadable_root: AtomicBool,
}

/// Counters, readable while running.
#[derive(Default)]
pub struct Counters {
    pub events: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub audited: AtomicU64,
    pub timeouts: AtomicU64,
    pub ignore_marks: AtomicU64,
    pub events_lost: AtomicU64,
    pub answer_micros: AtomicU64,
    pub answer_micros_max: AtomicU64,
}

impl Shared {
    pub fn new(
        group: sys::Group,
        policy: Policy,
        bound: Duration,
        ignore_marks: bool,
        overlay_marks: bool,
        stall: Option<Stall>,
        runtime_paths: Vec<std::path::PathBuf>,
    ) -> Self {
        Self {
            group,
            policy: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
            events: Mutex::new(VecDeque::new()),
            stats: Counters::default(),
            stop: AtomicBool::new(false),
            bound,
            ignore_marks,
            overlay_marks,
            stall,
            runtime_paths,
            timer: Mutex::new(VecDeque::new()),
            timer_wake: Condvar::new(),
            rescan: Mutex::new(std::collections::HashMap::new()),
            roots: Roots::default(),
            files: resolve::Remembered::default(),
            warned_unreadable_root: AtomicBool::new(false),
        }
    }

    /// The current policy (a clone of an `Arc`; the lock is held for that only).
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the policy with `change` applied to a copy. `revoke`: the change can deny what
    /// was allowed, so every ignore mark goes (after the swap: a decision that read the old
    /// policy and marks late sees the new generation and removes its own mark).
    pub fn update(&self, revoke: bool, change: impl FnOnce(&mut Policy)) {
        {
            let mut guard = self.policy.write().unwrap_or_else(PoisonError::into_inner);
            let mut next = Policy::clone(&guard);
            change(&mut next);
            *guard = Arc::new(next);
        }
        if revoke {
            self.revoke_ignore_marks();
        }
    }

    /// Drops every ignore mark so the next exec of any file is judged again.
    pub fn revoke_ignore_marks(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = self.group.flush_inode_marks() {
            tracing::error!(%error, "flushing fanotify ignore marks failed");
        }
    }

    /// Claims the right to answer `pending`; exactly one caller ever gets `true`.
    fn claim(&self, pending: &Pending) -> bool {
        !pending.answered.swap(true, Ordering::AcqRel)
    }

    /// Writes the answer of a claimed event.
    fn respond(&self, pending: &Pending, allow: bool) {
        if let Err(error) = self.group.respond(pending.fd.as_fd(), allow) {
            tracing::warn!(%error, pid = pending.pid, "answering a fanotify permission event failed");
        }
        let micros = u64::try_from(pending.received.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats
            .answer_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.stats
            .answer_micros_max
            .fetch_max(micros, Ordering::Relaxed);
    }

    /// Claims and answers `pending` unless someone already did. Returns whether this call did.
    fn answer(&self, pending: &Pending, allow: bool) -> bool {
        let claimed = self.claim(pending);
        if claimed {
            self.respond(pending, allow);
        }
        claimed
    }

    pub fn drain_events(&self) -> Vec<Decision> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect()
    }

    fn push_event(&self, decision: Decision) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() >= EVENT_CAPACITY {
            events.pop_front();
            self.stats.events_lost.fetch_add(1, Ordering::Relaxed);
        }
        events.push_back(decision);
    }

    pub fn snapshot_stats(&self) -> FanotifyStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FanotifyStats {
            events: load(&self.stats.events),
            allowed: load(&self.stats.allowed),
            denied: load(&self.stats.denied),
            audited: load(&self.stats.audited),
            timeouts: load(&self.stats.timeouts),
            ignore_marks: load(&self.stats.ignore_marks),
            events_lost: load(&self.stats.events_lost),
            answer_micros_total: load(&self.stats.answer_micros),
            answer_micros_max: load(&self.stats.answer_micros_max),
        }
    }
}

/// The decision event for a would-deny.
fn decision(
    mode: Mode,
    reason: &'static str,
    pending: &Pending,
    file: LayerId,
    layer: Option<LayerId>,
    container: Option<LayerId>,
) -> Decision {
    let pid = pending.pid;
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().to_owned())
        .unwrap_or_default();
    let pid = u32::try_from(pid).unwrap_or(0);
    Decision {
        time: SystemTime::now(),
        verdict: match mode {
            Mode::Enforce => "denied",
            Mode::Audit => "audit",
        },
        reason,
        mode: match mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        },
        hook: "exec",
        pid,
        tgid: pid,
        command,
        file,
        layer,
        container_root: container,
        // The process waits for this answer, so its cgroup is still there to read, and the
        // file is open here: its path now, while a container's writable layer still exists.
        cgroup_id: crate::enforce::cgroup::id_of_process(pid),
        real_path: std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&pending.fd)
        ))
        .ok(),
    }
}

/// Answers an event the backend could not decide in time, by the mode, and reports it.
fn answer_by_mode(shared: &Shared, pending: &Pending) {
    if pending.runtime.load(Ordering::Acquire) {
        if shared.answer(pending, true) {
            shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                pid = pending.pid,
                "container runtime allowed before the mount rescan finished"
            );
        }
        return;
    }
    let mode = shared.policy().mode;
    // The event is queued before the answer, so whoever sees the exec fail also sees why.
    if shared.claim(pending) {
        shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let file = sys::fstat(pending.fd.as_fd())
            .map(|st| LayerId::of_stat(&st))
            .unwrap_or(LayerId::new(0, 0));
        tracing::warn!(pid = pending.pid, %file, ?mode, "no decision within the bound; answered by the mode");
        shared.push_event(decision(mode, TIMEOUT, pending, file, None, None));
        shared.respond(pending, mode == Mode::Audit);
    }
}

/// Reads events and hands them to the workers until `stop`.
pub fn reader(shared: &Arc<Shared>, work: &mpsc::SyncSender<Arc<Pending>>) {
    let mut buffer = vec![0u8; 64 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        match sys::poll_one(shared.group.as_fd(), libc::POLLIN, 200) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(error) => {
                tracing::error!(%error, "polling the fanotify group failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        let events = match shared.group.read_events(&mut buffer) {
            Ok(events) => events,
            Err(error) => {
                // EMFILE and friends: the kernel has already denied that event.
                tracing::error!(%error, "reading fanotify events failed");
                continue;
            }
        };
        let now = Instant::now();
        for event in events {
            if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                tracing::error!("fanotify queue overflow: events were lost");
            }
            let Some(fd) = event.fd else { continue };
            shared.stats.events.fetch_add(1, Ordering::Relaxed);
            let pending = Arc::new(Pending {
                fd,
                pid: event.pid,
                answered: AtomicBool::new(false),
                received: now,
                runtime: AtomicBool::new(false),
            });
            schedule(shared, now + shared.bound, &pending);
            if let Err(error) = work.try_send(pending) {
                let (mpsc::TrySendError::Full(pending) | mpsc::TrySendError::Disconnected(pending)) =
                    error;
                answer_by_mode(shared, &pending);
            }
        }
    }
}

fn schedule(shared: &Shared, deadline: Instant, pending: &Arc<Pending>) {
    let mut queue = shared.timer.lock().unwrap_or_else(PoisonError::into_inner);
    let was_empty = queue.is_empty();
    queue.push_back((deadline, Arc::downgrade(pending)));
    drop(queue);
    // The timer sleeps until the front's deadline; later entries never need an earlier wake.
    if was_empty {
        shared.timer_wake.notify_one();
    }
}

/// Answers events still pending at their deadline.
pub fn timer(shared: &Arc<Shared>) {
    loop {
        let due = {
            let mut queue = shared.timer.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                while queue.front().is_some_and(|(_, weak)| {
                    weak.upgrade()
                        .is_none_or(|p| p.answered.load(Ordering::Acquire))
                }) {
                    queue.pop_front();
                }
                let now = Instant::now();
                match queue.front() {
                    None => {
                        queue = shared
                            .timer_wake
                            .wait_timeout(queue, Duration::from_millis(200))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    Some((deadline, _)) if *deadline <= now => {
                        break queue.pop_front().and_then(|(_, weak)| weak.upgrade());
                    }
                    Some((deadline, _)) => {
                        let wait = *deadline - now;
                        queue = shared
                            .timer_wake
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
        };
        if let Some(pending) = due {
            answer_by_mode(shared, &pending);
        }
    }
}

/// Takes events from the queue and decides them until the queue closes.
pub fn worker(shared: &Arc<Shared>, queue: &Mutex<mpsc::Receiver<Arc<Pending>>>) {
    loop {
        let next = {
            let receiver = queue.lock().unwrap_or_else(PoisonError::into_inner);
            receiver.recv()
        };
        match next {
            Ok(pending) => decide(shared, &pending),
            Err(mpsc::RecvError) => return,
        }
    }
}

/// Where the event's file comes from, whether an ignore mark may be placed for it, and the
/// real file's identity.
fn locate(
    shared: &Shared,
    policy: &Policy,
    pending: &Pending,
    st: &libc::stat,
) -> (Location, bool, LayerId) {
    let fd = pending.fd.as_fd();
    if let Some(overlay) = policy.overlays.get(&kernel_dev(st.st_dev)) {
        let (location, real) = overlay.locate(fd, st);
        // An overlay inode changes layer on copy-up without a write: never cached.
        return (
            location,
            false,
            real.unwrap_or_else(|| LayerId::of_stat(st)),
        );
    }
    // Only our own overlay marks deliver overlay files: one we do not know is a mount that is
    // going away or one whose layers report another device. Fail closed.
    if shared.overlay_marks && sys::fs_magic(fd).is_ok_and(|magic| magic == OVERLAYFS_MAGIC) {
        return (
            Location::Unknown { layer: None },
            false,
            LayerId::of_stat(st),
        );
    }
    (
        resolve::locate(policy, fd, st, Some(&shared.files)),
        true,
        LayerId::of_stat(st),
    )
}

/// The asking process's root. A root that cannot be read (a daemon outside the host's PID
/// namespace sees pid 0) is judged by the host's layer rule, and said once.
fn root_of(shared: &Shared, policy: &Policy, pid: i32) -> std::sync::Arc<Root> {
    if pid > 0 {
        if let Some(root) = shared.roots.of(pid, policy) {
            return root;
        }
    }
    if !shared.warned_unreadable_root.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            pid,
            "cannot read a process's root: its container is not known and its execs are judged by the layer rule (the daemon needs the host's PID namespace and CAP_SYS_PTRACE)"
        );
    }
    std::sync::Arc::new(Root::host())
}

fn decide(shared: &Shared, pending: &Pending) {
    if pending.answered.load(Ordering::Acquire) {
        return;
    }
    let generation = shared.generation.load(Ordering::SeqCst);
    let policy = shared.policy();
    let Ok(st) = sys::fstat(pending.fd.as_fd()) else {
        // Cannot even stat the fd the kernel gave us: judge it unreadable.
        let root = root_of(shared, &policy, pending.pid);
        let verdict = policy.verdict(&root, Location::Unknown { layer: None });
        finish(
            shared,
            pending,
            verdict,
            (LayerId::new(0, 0), None, root.key),
        );
        return;
    };
    if policy.runtimes.contains(&(st.st_dev, st.st_ino)) {
        // A container runtime starts: whatever rootfs it is about to run is mounted by now, so
        // mark it before the runtime may exec anything from it. Never cached: every start counts.
        tracing::debug!(
            pid = pending.pid,
            "container runtime exec: rescanning the mounts first"
        );
        pending.runtime.store(true, Ordering::Release);
        super::watcher::rescan_overlays(shared, false);
        if shared.answer(pending, true) {
            shared.stats.allowed.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    // Runtime execs above need no root: only now is the process's container looked up.
    let root = root_of(shared, &policy, pending.pid);
    let (location, cacheable_here, file) = locate(shared, &policy, pending, &st);
    if let (Some(stall), Location::Layer { layer }) = (&shared.stall, location) {
        if stall.layer == layer {
            std::thread::sleep(stall.duration);
        }
    }
    let verdict = policy.verdict(&root, location);
    tracing::debug!(pid = pending.pid, ?root, ?location, ?verdict, "decided");
    if verdict.cacheable
        && cacheable_here
        && shared.ignore_marks
        && !pending.answered.load(Ordering::Acquire)
    {
        cache(shared, pending, generation);
    }
    let layer = match location {
        Location::Layer { layer } => Some(layer),
        Location::Unknown { layer } => layer,
        Location::OutOfScope => None,
    };
    finish(shared, pending, verdict, (file, layer, root.key));
}

/// Places an ignore mark for an allowed inode; removes it again if the policy changed since the
/// decision began (the revocation's flush may have run before this mark).
fn cache(shared: &Shared, pending: &Pending, generation: u64) {
    let fd = pending.fd.as_fd();
    if let Err(error) = shared.group.ignore_inode(fd) {
        tracing::debug!(%error, "placing an ignore mark failed");
        return;
    }
    if shared.generation.load(Ordering::SeqCst) == generation {
        shared.stats.ignore_marks.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = shared.group.unignore_inode(fd);
    }
}

/// Answers a decided event: `what` is the file, its layer and the process's container.
fn finish(
    shared: &Shared,
    pending: &Pending,
    verdict: Verdict,
    what: (LayerId, Option<LayerId>, Option<LayerId>),
) {
    let (file, layer, container) = what;
    match verdict.decision {
        imagegate_common::Decision::Allow => {
            if shared.answer(pending, true) {
                shared.stats.allowed.fetch_add(1, Ordering::Relaxed);
            }
        }
        imagegate_common::Decision::Untrusted { reason, mode } => {
            let mode = if mode == imagegate_common::mode::AUDIT {
                Mode::Audit
            } else {
                Mode::Enforce
            };
            if shared.claim(pending) {
                let counter = match mode {
                    Mode::Enforce => &shared.stats.denied,
                    Mode::Audit => &shared.stats.audited,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let reason = reason_name(reason);
                tracing::info!(pid = pending.pid, %file, layer = ?layer, container = ?container, reason, ?mode, "untrusted exec");
                shared.push_event(decision(mode, reason, pending, file, layer, container));
                shared.respond(pending, mode == Mode::Audit);
            }
        }
    }
}
