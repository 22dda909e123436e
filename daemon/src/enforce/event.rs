//! Decision events: what the kernel reports for every deny (and every would-deny in audit
//! mode), in a form for logs and JSON.

use std::time::{Duration, SystemTime};

use imagegate_common::{hook, mode, reason, verdict, DecisionEvent};

use super::LayerId;

/// One decision that was not a plain allow.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Wall-clock time of the decision.
    #[serde(with = "unix_seconds")]
    pub time: SystemTime,
    /// `denied` or `audit` (would have been denied).
    pub verdict: &'static str,
    /// Why the file was untrusted.
    pub reason: &'static str,
    /// `enforce` or `audit`.
    pub mode: &'static str,
    /// `exec`, `mmap` or `mprotect`.
    pub hook: &'static str,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// The task's command name.
    pub command: String,
    /// The judged (real) file.
    pub file: LayerId,
    /// Its layer directory; `None` when the walk could not find it.
    pub layer: Option<LayerId>,
    /// The asking process's container, by its root's writable layer directory (or top layer
    /// when read-only); `None` for a host process.
    pub container_root: Option<LayerId>,
    /// The process's cgroup (v2) id ([`super::cgroup`]); `None` when unknown.
    pub cgroup_id: Option<u64>,
    /// The file's path as the kernel prints it for the backend's open descriptor (fanotify):
    /// within the process's mount namespace when that is not the daemon's. Used to name the
    /// path the process saw; not reported itself.
    #[serde(skip)]
    pub real_path: Option<std::path::PathBuf>,
}

impl Decision {
    /// Decodes a ring buffer record. `None` for a record of the wrong size (never trusted blindly).
    #[must_use]
    pub fn decode(bytes: &[u8], boot_time: SystemTime) -> Option<Self> {
        if bytes.len() < size_of::<DecisionEvent>() {
            return None;
        }
        // SAFETY: the length is checked and DecisionEvent is plain integers; the read is unaligned.
        let raw: DecisionEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let command_len = raw
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.comm.len());
        Some(Self {
            time: boot_time + Duration::from_nanos(raw.boot_ns),
            verdict: match raw.verdict {
                verdict::DENIED => "denied",
                verdict::AUDIT => "audit",
                _ => "unknown",
            },
            reason: reason_name(raw.reason),
            mode: if raw.mode == mode::AUDIT {
                "audit"
            } else {
                "enforce"
            },
            hook: match raw.hook {
                hook::EXEC => "exec",
                hook::MMAP => "mmap",
                hook::MPROTECT => "mprotect",
                _ => "unknown",
            },
            pid: raw.pid,
            tgid: raw.tgid,
            command: String::from_utf8_lossy(&raw.comm[..command_len]).into_owned(),
            file: LayerId::from_key(raw.file),
            layer: (raw.layer.ino != 0).then(|| LayerId::from_key(raw.layer)),
            cgroup_id: (raw.cgroup_id != 0).then_some(raw.cgroup_id),
            container_root: (raw.container.ino != 0).then(|| LayerId::from_key(raw.container)),
            real_path: None,
        })
    }
}

/// The name of a `reason` constant, as events and logs carry it.
#[must_use]
pub const fn reason_name(raw: u32) -> &'static str {
    match raw {
        reason::UNVERIFIED_LAYER => "unverified_layer",
        reason::DRIFT => "drift",
        reason::WALK_LIMIT => "walk_limit",
        reason::UNREADABLE => "unreadable",
        reason::UNTRUSTED_IMAGE => "untrusted_image",
        reason::OUTSIDE_IMAGE => "outside_image",
        _ => "unknown",
    }
}

/// The wall-clock time at which `CLOCK_BOOTTIME` was zero, to turn event times into dates.
#[must_use]
pub fn boot_time() -> SystemTime {
    let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|ts| {
            Duration::new(
                ts.tv_sec().unsigned_abs(),
                ts.tv_nsec().unsigned_abs() as u32,
            )
        })
        .unwrap_or_default();
    SystemTime::now()
        .checked_sub(boot)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        time: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let seconds = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        serializer.serialize_f64(seconds)
    }
}

#[cfg(test)]
mod tests {
    use imagegate_common::DevIno;

    use super::*;

    #[test]
    fn decodes_a_kernel_record() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"evil");
        let raw = DecisionEvent {
            boot_ns: 5_000_000_000,
            file: DevIno::new(7 << 20, 42),
            layer: DevIno {
                generation: 3,
                ..DevIno::new(7 << 20, 9)
            },
            pid: 10,
            tgid: 11,
            hook: hook::EXEC,
            verdict: verdict::DENIED,
            reason: reason::UNVERIFIED_LAYER,
            mode: mode::ENFORCE,
            comm,
            cgroup_id: 4242,
            container: DevIno::new(7 << 20, 77),
        };
        // SAFETY: viewing a plain repr(C) struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const DecisionEvent).cast::<u8>(),
                size_of::<DecisionEvent>(),
            )
        };
        let decision = Decision::decode(bytes, SystemTime::UNIX_EPOCH).expect("decodes");
        assert_eq!(decision.verdict, "denied");
        assert_eq!(decision.reason, "unverified_layer");
        assert_eq!(decision.hook, "exec");
        assert_eq!(decision.command, "evil");
        assert_eq!(decision.layer.map(|l| l.ino), Some(9));
        assert_eq!(decision.cgroup_id, Some(4242));
        assert_eq!(decision.container_root.map(|c| c.ino), Some(77));
        assert_eq!(decision.layer.map(|l| (l.ino, l.generation)), Some((9, 3)));
        assert_eq!(
            decision.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(5)
        );
        assert!(
            Decision::decode(&bytes[..10], SystemTime::UNIX_EPOCH).is_none(),
            "short record rejected"
        );
    }
}
