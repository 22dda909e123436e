//! The running backend: one reader thread takes events off the group and decides a lone event
//! itself (the common case: one exec at a time), handing the others of a batch to a worker pool;
//! decisions come from the in-memory policy. A timer answers, by the mode, any event still
//! pending at its deadline, and watches the reader's own decisions: one that takes longer than
//! a fraction of the bound wakes a standby thread that reads (and hands off) the events queued
//! behind it until the reader is back, so a stalled decision never keeps later events unread.
//! Every event is answered exactly once (`Pending::answered`), and its fd stays open until
//! nobody holds the event, so a late answer can never hit a reused fd number.

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
    /// Whether the reader decides the last event of each batch itself (off only to measure
    /// what the hand-off to a worker costs).
    pub decide_in_reader: bool,
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
    /// The reader's decision in progress: when its event may have been queued (nanoseconds since
    /// `epoch`, at least 1), 0 when the reader is not deciding.
    inline_since: AtomicU64,
    /// Whether the timer watches the reader's decisions (set by the reader, which wakes the
    /// timer when it sets it; cleared by the timer when it finds the reader idle).
    watching: AtomicBool,
    /// The reader decision (its `inline_since`) the standby was last woken for.
    taken_over: AtomicU64,
    /// When the most recent read of the group by any thread began (nanoseconds since `epoch`):
    /// events a thread reads after being busy may have been queued since then.
    last_read: AtomicU64,
    epoch: Instant,
    /// Set when the standby is to read for a stalled reader.
    standby: Mutex<bool>,
    standby_wake: Condvar,
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
    pub decided_inline: AtomicU64,
    pub takeovers: AtomicU64,
}

impl Shared {
    pub fn new(
        group: sys::Group,
        policy: Policy,
        bound: Duration,
        (ignore_marks, decide_in_reader): (bool, bool),
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
            decide_in_reader,
            overlay_marks,
            stall,
            runtime_paths,
            timer: Mutex::new(VecDeque::new()),
            timer_wake: Condvar::new(),
            rescan: Mutex::new(std::collections::HashMap::new()),
            roots: Roots::default(),
            files: resolve::Remembered::default(),
            warned_unreadable_root: AtomicBool::new(false),
            inline_since: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            taken_over: AtomicU64::new(0),
            last_read: AtomicU64::new(0),
            epoch: Instant::now(),
            standby: Mutex::new(false),
            standby_wake: Condvar::new(),
        }
    }

    /// `at` as nanoseconds since `epoch`, at least 1 (0 means none).
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// How long the reader may decide an event itself before the standby reads for it: a
    /// fraction of the bound, so the events queued behind a stalled decision are read, and
    /// decided or answered by the mode, within the bound.
    fn takeover_after(&self) -> Duration {
        (self.bound / 8).max(Duration::from_millis(1))
    }

    /// Wakes the standby (stop, or a takeover).
    pub fn wake_standby(&self, takeover: bool) {
        let mut requested = self.standby.lock().unwrap_or_else(PoisonError::into_inner);
        *requested |= takeover;
        self.standby_wake.notify_all();
    }

    /// The timer's look at the reader's decision in progress (called with the timer's lock held).
    fn watch_reader(&self, now: Instant) -> Watch {
        if !self.watching.load(Ordering::SeqCst) {
            return Watch::Idle;
        }
        let mut since = self.inline_since.load(Ordering::SeqCst);
        if since == 0 {
            self.watching.store(false, Ordering::SeqCst);
            // A decision that began between the load and the store saw `watching` still set
            // and did not wake the timer: look again.
            since = self.inline_since.load(Ordering::SeqCst);
            if since == 0 {
                return Watch::Idle;
            }
            self.watching.store(true, Ordering::SeqCst);
        }
        let at = self.instant(since) + self.takeover_after();
        if since == self.taken_over.load(Ordering::SeqCst) {
            // The standby reads already; look again later.
            Watch::Until(now + self.takeover_after())
        } else if at <= now {
            Watch::Stuck(since)
        } else {
            Watch::Until(at)
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
            decided_inline: load(&self.stats.decided_inline),
            takeovers: load(&self.stats.takeovers),
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

/// What the timer found the reader doing.
enum Watch {
    /// Not deciding (or not watched).
    Idle,
    /// Deciding; look again at this time.
    Until(Instant),
    /// Deciding the event queued at `since` for too long: the standby is to read.
    Stuck(u64),
}

/// Waits up to `timeout_ms` for events; whether there are any.
fn wait_for_events(shared: &Shared, timeout_ms: i32) -> bool {
    match sys::poll_one(shared.group.as_fd(), libc::POLLIN, timeout_ms) {
        Ok(ready) => ready,
        Err(error) => {
            tracing::error!(%error, "polling the fanotify group failed");
            std::thread::sleep(Duration::from_millis(10));
            false
        }
    }
}

/// Reads what is queued, each event with its deadline scheduled. `waited`: whether the thread
/// was waiting for events (or only handing them off) since its last read; if not (it was
/// deciding), the events may have been queued since the most recent read by any thread began,
/// and count from then.
fn read_queued(shared: &Shared, buffer: &mut [u8], waited: bool) -> Vec<Arc<Pending>> {
    let began = shared.nanos(Instant::now());
    let previous = shared.last_read.fetch_max(began, Ordering::SeqCst);
    let events = match shared.group.read_events(buffer) {
        Ok(events) => events,
        Err(error) => {
            // EMFILE and friends: the kernel has already denied that event.
            tracing::error!(%error, "reading fanotify events failed");
            return Vec::new();
        }
    };
    let now = Instant::now();
    let received = if waited {
        now
    } else {
        shared.instant(previous.max(1)).min(now)
    };
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            tracing::error!("fanotify queue overflow: events were lost");
        }
        let Some(fd) = event.fd else { continue };
        shared.stats.events.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(Pending {
            fd,
            pid: event.pid,
            answered: AtomicBool::new(false),
            received,
            runtime: AtomicBool::new(false),
        });
        schedule(shared, received + shared.bound, &event);
        pending.push(event);
    }
    pending
}

/// Gives `pending` to the workers, or answers it by the mode when their queue is full.
fn hand_off(shared: &Shared, work: &mpsc::SyncSender<Arc<Pending>>, pending: Arc<Pending>) {
    if let Err(error) = work.try_send(pending) {
        let (mpsc::TrySendError::Full(pending) | mpsc::TrySendError::Disconnected(pending)) = error;
        answer_by_mode(shared, &pending);
    }
}

/// Reads events until `stop`: the last of each batch is decided here (no thread hand-off on the
/// way to the answer), the others go to the workers. While this thread decides, the timer
/// watches it ([`Shared::watch_reader`]).
pub fn reader(shared: &Arc<Shared>, work: &mpsc::SyncSender<Arc<Pending>>) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut waited = true;
    while !shared.stop.load(Ordering::Relaxed) {
        // After a decision, read at once: events may have queued meanwhile.
        if waited && !wait_for_events(shared, 200) {
            continue;
        }
        let mut batch = read_queued(shared, &mut buffer, waited);
        waited = true;
        if !shared.decide_in_reader {
            for pending in batch {
                hand_off(shared, work, pending);
            }
            continue;
        }
        let Some(last) = batch.pop() else { continue };
        for pending in batch {
            hand_off(shared, work, pending);
        }
        shared
            .inline_since
            .store(shared.nanos(last.received), Ordering::SeqCst);
        if !shared.watching.swap(true, Ordering::SeqCst) {
            let _queue = shared.timer.lock().unwrap_or_else(PoisonError::into_inner);
            shared.timer_wake.notify_one();
        }
        let decided = decide(shared, &last, true);
        shared.inline_since.store(0, Ordering::SeqCst);
        waited = false;
        if decided {
            shared.stats.decided_inline.fetch_add(1, Ordering::Relaxed);
        } else {
            hand_off(shared, work, last);
        }
    }
}

/// Reads events for the reader while it is stuck in a decision (woken by the timer), handing
/// every one to the workers, until the reader's decision ends.
pub fn standby(shared: &Arc<Shared>, work: &mpsc::SyncSender<Arc<Pending>>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        {
            let mut requested = shared
                .standby
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while !*requested {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                requested = shared
                    .standby_wake
                    .wait(requested)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *requested = false;
        }
        let stuck = shared.taken_over.load(Ordering::SeqCst);
        shared.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            after = ?shared.takeover_after(),
            "a decision in the fanotify reader is slow: reading events in the standby thread until it ends"
        );
        // The first read takes what queued behind the stalled decision.
        let mut waited = false;
        while !shared.stop.load(Ordering::Relaxed)
            && shared.inline_since.load(Ordering::SeqCst) == stuck
        {
            if waited && !wait_for_events(shared, 10) {
                continue;
            }
            for pending in read_queued(shared, &mut buffer, waited) {
                hand_off(shared, work, pending);
            }
            waited = true;
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

/// What woke the timer.
enum Due {
    Event(Option<Arc<Pending>>),
    Stuck(u64),
}

/// Answers events still pending at their deadline, and wakes the standby when the reader's own
/// decision takes too long.
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
                let mut wake = now + Duration::from_millis(200);
                match shared.watch_reader(now) {
                    Watch::Idle => {}
                    Watch::Until(at) => wake = wake.min(at),
                    Watch::Stuck(since) => break Due::Stuck(since),
                }
                match queue.front() {
                    Some((deadline, _)) if *deadline <= now => {
                        break Due::Event(queue.pop_front().and_then(|(_, weak)| weak.upgrade()));
                    }
                    Some((deadline, _)) => wake = wake.min(*deadline),
                    None => {}
                }
                queue = shared
                    .timer_wake
                    .wait_timeout(queue, wake.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        match due {
            Due::Event(Some(pending)) => answer_by_mode(shared, &pending),
            Due::Event(None) => {}
            Due::Stuck(since) => {
                shared.taken_over.store(since, Ordering::SeqCst);
                shared.wake_standby(true);
            }
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
            Ok(pending) => {
                decide(shared, &pending, false);
            }
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

/// Decides `pending` and answers it. `inline`: called by the reader, which keeps nothing that
/// does I/O under a lock for itself: a container runtime's exec (which rescans the mounts) is
/// left to a worker, and `false` returned. Otherwise `true`.
fn decide(shared: &Shared, pending: &Pending, inline: bool) -> bool {
    if pending.answered.load(Ordering::Acquire) {
        return true;
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
        return true;
    };
    if policy.runtimes.contains(&(st.st_dev, st.st_ino)) {
        if inline {
            return false;
        }
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
        return true;
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
    true
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
