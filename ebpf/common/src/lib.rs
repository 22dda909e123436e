//! The kernel/user ABI of imagegate: every map key, map value, event and constant that both the
//! BPF programs and the daemon use, defined once. All types are `#[repr(C)]`, fixed-width, with
//! explicit padding, and their sizes are checked at compile time.
#![no_std]
#![deny(missing_docs)]

/// Directory under the BPF filesystem where programs (as links) and maps are pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/imagegate";

/// Map names (also their pin names). At most 15 bytes: the kernel's object-name limit.
pub mod maps {
    /// Layer snapshot directories the daemon knows: `DevIno` → `LayerState`.
    pub const LAYERS: &str = "IG_LAYERS";
    /// Snapshotter `snapshots` directories whose children's `fs` directories are layers:
    /// `DevIno` → `scope_flags`.
    pub const SCOPES: &str = "IG_SCOPES";
    /// Devices that hold a scope directory (fast path: any other device is out of scope) →
    /// `scope_dev` flags.
    pub const SCOPE_DEVS: &str = "IG_SCOPE_DEVS";
    /// One `Settings` entry: mode and drift policy.
    pub const SETTINGS: &str = "IG_SETTINGS";
    /// Decision events (`DecisionEvent`), a ring buffer.
    pub const EVENTS: &str = "IG_EVENTS";
    /// Per-CPU counters, indexed by the `stats` constants.
    pub const STATS: &str = "IG_STATS";
    /// Container root file systems the daemon knows: the `DevIno` of the container's writable
    /// snapshot directory (`snapshots/<id>/fs`, the overlay's upper layer) → `container_state`.
    pub const CONTAINERS: &str = "IG_CONTAINERS";
}

/// Program names (the function names in the eBPF object) and the LSM hooks they attach to.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("file_open", "file_open"),
    ("mmap_file", "mmap_file"),
    ("file_mprotect", "file_mprotect"),
];

/// Name of the read-only global that carries the kernel's struct offsets.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Capacity of the layer map: at least 65,536 layers, with room to spare.
pub const MAX_LAYERS: u32 = 131_072;
/// Capacity of the container map (running and created containers on the node).
pub const MAX_CONTAINERS: u32 = 16_384;
/// How many lower layers of a container's overlay are compared with a file's layer to tell
/// whether the file is the container's own. A file of a deeper layer counts as outside the
/// image (see `outside_image`); containerd images rarely exceed 127 layers.
pub const MAX_IMAGE_LAYERS: u32 = 128;
/// Capacity of the scope map.
pub const MAX_SCOPES: u32 = 16;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// How many `d_parent` steps the layer walk takes before it gives up. A file nested deeper than
/// this on a scope's device is denied: image authors control path depth, so a walk that cannot
/// decide must not allow.
pub const MAX_WALK_DEPTH: u32 = 64;

/// A file system object's identity: the kernel's internal device number (`MAJOR << 20 | MINOR`,
/// not the userspace `st_dev` encoding), inode number and inode generation.
///
/// The generation is what keeps a key from being inherited: ext4 gives a removed directory's
/// inode number to the next one it creates, so `(dev, ino)` alone would let a new snapshot
/// directory match an old one's table entry (kept by pinned maps while the daemon is down, or
/// until it handles the removal). File systems draw a new generation for each inode they create.
/// It is zero on devices whose generation userspace cannot read (no `FS_IOC_GETVERSION` and no
/// known file handle layout; see [`scope_dev::GENERATION`]), on both sides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DevIno {
    /// `super_block.s_dev` in the kernel's encoding.
    pub dev: u64,
    /// `inode.i_ino`.
    pub ino: u64,
    /// `inode.i_generation` (zero where the device's generations are not used).
    pub generation: u32,
    /// Explicit padding: map keys are compared as bytes, so none may be left undefined.
    pub pad: u32,
}

impl DevIno {
    /// An identity without a generation (files, and objects on devices without one).
    #[must_use]
    pub const fn new(dev: u64, ino: u64) -> Self {
        Self {
            dev,
            ino,
            generation: 0,
            pad: 0,
        }
    }
}

/// Converts a userspace `st_dev` (glibc's `makedev` encoding) to the kernel's internal `dev_t`.
#[must_use]
pub const fn kernel_dev(st_dev: u64) -> u64 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
}

/// Flags of a device that holds scopes (`SCOPE_DEVS` values).
pub mod scope_dev {
    /// At least one scope is on the device (every entry has it).
    pub const PRESENT: u32 = 1;
    /// Keys on this device carry inode generations (userspace can read them here).
    pub const GENERATION: u32 = 2;
}

/// Flags of a scope (`SCOPES` values).
pub mod scope_flags {
    /// Deny in this scope whatever the global mode is: the daemon's self-test uses it on its
    /// scratch overlay so it can prove denial while the node runs in audit mode.
    pub const ALWAYS_ENFORCE: u32 = 1;
}

/// What the daemon knows about a layer directory (`LAYERS` values).
pub mod layer_state {
    /// At least one image with a trusted verdict contains this layer.
    pub const VERIFIED: u32 = 1;
    /// A container's writable (upper) layer: executing from it is drift.
    pub const WRITABLE: u32 = 2;
    /// Untrusted, but only images whose policy scope is in audit mode contain it: allow and
    /// report, whatever the global mode.
    pub const AUDIT: u32 = 3;
}

/// What the daemon knows about a container (`CONTAINERS` values). A container root under a
/// scope with no entry is a container the daemon has not judged yet: untrusted.
pub mod container_state {
    /// Its image's verdict is trusted: it runs its own image's layers.
    pub const TRUSTED: u32 = 1;
    /// Its image is untrusted (or unknown, pending, in error): it runs nothing.
    pub const UNTRUSTED: u32 = 2;
    /// Untrusted, but its image's policy scope audits: allow and report, whatever the mode.
    pub const AUDIT: u32 = 3;
    /// The low byte holds one of the states above; the bits above it are flags.
    pub const STATE_MASK: u32 = 0xff;
    /// Flag: the container's image's policy scope sets `outside_image` itself, to
    /// [`OUTSIDE_ALLOW`]'s value (else the global setting applies).
    pub const OUTSIDE_SET: u32 = 0x100;
    /// Flag: with [`OUTSIDE_SET`], files from outside the image are allowed (else denied).
    pub const OUTSIDE_ALLOW: u32 = 0x200;
}

/// Enforcement mode. Zero is enforce, so an unset `SETTINGS` entry fails closed.
pub mod mode {
    /// Deny and report.
    pub const ENFORCE: u32 = 0;
    /// Report and allow.
    pub const AUDIT: u32 = 1;
}

/// What a trusted container may execute from outside its image (volumes, tmpfs, memfd, other
/// layers). Zero is deny (fail closed); the daemon writes the configured value (default allow).
pub mod outside_image {
    /// Deny and report (reason `outside_image`).
    pub const DENY: u32 = 0;
    /// Allow without an event.
    pub const ALLOW: u32 = 1;
}

/// What to do with an exec from a container's writable layer. Zero is deny (fail closed).
pub mod drift {
    /// Treat it like an unverified layer.
    pub const DENY: u32 = 0;
    /// Allow it without an event.
    pub const ALLOW: u32 = 1;
}

/// The version of this ABI: every type and constant here that the programs and the daemon
/// share. Bump it with any change to them. The daemon stamps it into `Settings::abi`; a daemon
/// that finds pinned programs of another version (an upgrade) attaches its own beside them,
/// copies the tables over and detaches the old ones, instead of re-opening maps whose layout
/// it would misread.
pub const ABI_VERSION: u32 = 6;

/// The one `SETTINGS` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// A `mode` constant.
    pub mode: u32,
    /// A `drift` constant.
    pub drift: u32,
    /// [`ABI_VERSION`] of the daemon that last wrote this entry; zero before the first write.
    /// The programs do not read it.
    pub abi: u32,
    /// An `outside_image` constant.
    pub outside_image: u32,
}

/// Which hook made a decision.
pub mod hook {
    /// `file_open` of a file opened for exec (the binary, a script, the ELF interpreter).
    pub const EXEC: u32 = 1;
    /// `mmap_file` with `PROT_EXEC`.
    pub const MMAP: u32 = 2;
    /// `file_mprotect` adding `PROT_EXEC`.
    pub const MPROTECT: u32 = 3;
}

/// The outcome recorded in an event. Allowed decisions from verified layers produce no event.
pub mod verdict {
    /// Denied (`EPERM`), enforce mode.
    pub const DENIED: u32 = 1;
    /// Would have been denied; allowed because the mode is audit.
    pub const AUDIT: u32 = 2;
}

/// Why a file was judged untrusted.
pub mod reason {
    /// Its layer is not in the verified table (unknown, or no trusted image contains it).
    pub const UNVERIFIED_LAYER: u32 = 1;
    /// It lives in a container's writable layer and drift is denied.
    pub const DRIFT: u32 = 2;
    /// The walk to the layer directory hit `MAX_WALK_DEPTH` on a scope's device.
    pub const WALK_LIMIT: u32 = 3;
    /// The kernel objects needed to find its layer could not be read on a scope's device.
    pub const UNREADABLE: u32 = 4;
    /// The process runs in a container whose image is not trusted: it executes nothing.
    pub const UNTRUSTED_IMAGE: u32 = 5;
    /// A trusted container executed a file from outside its image and the policy denies that.
    pub const OUTSIDE_IMAGE: u32 = 6;
}

/// Counter indexes in `STATS`.
pub mod stats {
    /// Decisions that reached the layer walk (the file was on a scope's device).
    pub const JUDGED: u32 = 0;
    /// Denied in enforce mode.
    pub const DENIED: u32 = 1;
    /// Would-deny decisions allowed by audit mode.
    pub const AUDITED: u32 = 2;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// One decision that was not a plain allow, as the programs report it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionEvent {
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub boot_ns: u64,
    /// The judged (real, backing) file.
    pub file: DevIno,
    /// Its layer directory (`snapshots/<id>/fs`); zero when the walk could not find it.
    pub layer: DevIno,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    /// A `hook` constant.
    pub hook: u32,
    /// A `verdict` constant.
    pub verdict: u32,
    /// A `reason` constant.
    pub reason: u32,
    /// The `mode` in force.
    pub mode: u32,
    /// The task's command name (`comm`), NUL padded.
    pub comm: [u8; 16],
    /// The task's cgroup (v2) id, the inode number of its cgroup directory: names the container
    /// even after the process has exited.
    pub cgroup_id: u64,
    /// The process's container: its root's key in `CONTAINERS` (the writable snapshot
    /// directory, or the top layer of a read-only root); zero for a host process.
    pub container: DevIno,
}

/// Offsets into kernel structures, read from the running kernel's BTF by the daemon and set as a
/// read-only global before the programs load (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `file.f_flags`.
    pub file_f_flags: u32,
    /// `file.f_inode`.
    pub file_f_inode: u32,
    /// `file.private_data` (overlayfs keeps its real file, or `struct ovl_file`, there).
    pub file_private_data: u32,
    /// `inode.i_sb`.
    pub inode_i_sb: u32,
    /// `inode.i_ino`.
    pub inode_i_ino: u32,
    /// `inode.i_generation`.
    pub inode_i_generation: u32,
    /// `inode.i_dentry` (an `hlist_head` of aliases).
    pub inode_i_dentry: u32,
    /// `dentry.d_u.d_alias` (the alias list node).
    pub dentry_d_alias: u32,
    /// `dentry.d_parent`.
    pub dentry_d_parent: u32,
    /// `dentry.d_inode`.
    pub dentry_d_inode: u32,
    /// `super_block.s_dev`.
    pub sb_s_dev: u32,
    /// `super_block.s_magic`.
    pub sb_s_magic: u32,
    /// `vm_area_struct.vm_file`.
    pub vma_vm_file: u32,
    /// `vm_area_struct.vm_flags`.
    pub vma_vm_flags: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.exe_file`.
    pub mm_exe_file: u32,
    /// `ovl_file.realfile`, when `OVL_FILE` is set in `flags`.
    pub ovl_file_realfile: u32,
    /// `task_struct.fs`.
    pub task_fs: u32,
    /// `fs_struct.root.mnt`.
    pub fs_root_mnt: u32,
    /// `fs_struct.root.dentry`.
    pub fs_root_dentry: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `dentry.d_sb`.
    pub dentry_d_sb: u32,
    /// `super_block.s_fs_info` (an overlay's `struct ovl_fs`).
    pub sb_s_fs_info: u32,
    /// `ovl_fs.numlayer` (upper, if any, plus lowers).
    pub ovl_fs_numlayer: u32,
    /// `ovl_fs.layers` (array; index 0 is the upper layer, its `mnt` NULL without one).
    pub ovl_fs_layers: u32,
    /// `ovl_layer.mnt` (the layer's private clone of its directory's mount).
    pub ovl_layer_mnt: u32,
    /// `sizeof(struct ovl_layer)`.
    pub ovl_layer_size: u32,
    /// `btrfs_inode.vfs_inode` (the VFS inode embedded in btrfs's own), when `BTRFS` is set.
    pub btrfs_inode_vfs_inode: u32,
    /// `btrfs_inode.root` (the inode's subvolume), when `BTRFS` is set.
    pub btrfs_inode_root: u32,
    /// `btrfs_root.anon_dev`: the subvolume's device number, which `stat` reports as `st_dev`.
    pub btrfs_root_anon_dev: u32,
    /// `offset_flags` bits.
    pub flags: u32,
}

/// Bits of `KernelOffsets::flags`.
pub mod offset_flags {
    /// An overlayfs file's `private_data` points to a `struct ovl_file` (6.13+), not the real file.
    pub const OVL_FILE: u32 = 1;
    /// Set by the daemon once every offset came from BTF. The daemon never loads the programs
    /// without it; the programs check it so a mis-built object cannot read at offset zero.
    pub const VALID: u32 = 2;
    /// The `btrfs_*` offsets are set: a btrfs inode's device is its subvolume's `anon_dev`
    /// (what `stat` reports and the daemon keys by), not its super block's `s_dev`.
    pub const BTRFS: u32 = 4;
}

/// `__FMODE_EXEC` in `file.f_flags`: the file was opened by `open_exec` (exec, interpreter).
pub const FMODE_EXEC_FLAG: u32 = 0x20;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 0x4;
/// `VM_EXEC` in `vm_area_struct.vm_flags`.
pub const VM_EXEC: u64 = 0x4;
/// `OVERLAYFS_SUPER_MAGIC`.
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
/// `BTRFS_SUPER_MAGIC`.
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
/// How many overlayfs layers deep `mmap_file`/`file_mprotect` follow `private_data` to a real file.
pub const MAX_OVERLAY_NESTING: u32 = 4;

const _: () = assert!(core::mem::size_of::<DevIno>() == 24);
const _: () = assert!(core::mem::size_of::<Settings>() == 16);
const _: () = assert!(core::mem::size_of::<DecisionEvent>() == 128);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 124);

/// Which process asks, as far as trust goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// Outside every container the daemon judges (its root is not a container root under a
    /// scope): the layer rule applies.
    Host,
    /// In a container whose root is under a scope: a `container_state` value, or zero when the
    /// daemon has not judged it (yet), which is untrusted.
    Container {
        /// `container_state` or zero.
        state: u32,
    },
}

/// Where the executed or mapped file's bytes come from, seen from the asking process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Not in any layer directory under a scope: a host file, tmpfs, memfd, a volume.
    OutsideScopes,
    /// One of the layers of the process's own container root (its image's layers).
    OwnLayer,
    /// The process's own container's writable layer (drift).
    OwnWritable,
    /// Some layer directory under a scope that is not the process's own: a `layer_state`
    /// value, zero when the table does not hold it.
    Layer {
        /// `layer_state` or zero.
        state: u32,
    },
    /// On a scope's device, but the layer could not be told: a `reason` (walk limit,
    /// unreadable).
    Undetermined {
        /// `reason::WALK_LIMIT` or `reason::UNREADABLE`.
        reason: u32,
    },
}

/// The answer to one exec or executable mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allow, no event.
    Allow,
    /// Untrusted: denied when `mode` is `mode::ENFORCE`, allowed and reported under
    /// `mode::AUDIT`; always reported.
    Untrusted {
        /// A `reason` constant.
        reason: u32,
        /// The mode that applies to this decision (scope, audit-only state and global mode
        /// already combined).
        mode: u32,
    },
}

impl Decision {
    /// Whether the operation may go ahead.
    #[must_use]
    pub const fn allows(self) -> bool {
        match self {
            Self::Allow => true,
            Self::Untrusted { mode, .. } => mode == mode::AUDIT,
        }
    }
}

/// The exec decision rule, written once: the BPF programs and the fanotify backend both call it
/// with the facts they gathered. `scope_flags` are the flags of the file's scope (zero when the
/// file is not under one).
///
/// - A process of a container whose image is not trusted executes nothing.
/// - A process of a trusted container executes its own image's layers; its writable layer
///   follows `drift`; anything else follows `outside_image`.
/// - A host process executes a file of a layer snapshot only if a trusted image contains that
///   layer; its writable-layer files follow `drift`; everything outside the scopes is allowed.
#[must_use]
#[inline(always)]
pub fn decide(process: Process, origin: Origin, settings: &Settings, scope_flags: u32) -> Decision {
    match process {
        Process::Container { state } => match state & container_state::STATE_MASK {
            container_state::TRUSTED => match origin {
                Origin::OwnLayer => Decision::Allow,
                Origin::OwnWritable => drift_rule(settings, scope_flags),
                Origin::Undetermined { reason } => untrusted(reason, false, settings, scope_flags),
                Origin::OutsideScopes | Origin::Layer { .. } => {
                    let allowed = if state & container_state::OUTSIDE_SET != 0 {
                        state & container_state::OUTSIDE_ALLOW != 0
                    } else {
                        settings.outside_image == outside_image::ALLOW
                    };
                    if allowed {
                        Decision::Allow
                    } else {
                        untrusted(reason::OUTSIDE_IMAGE, false, settings, scope_flags)
                    }
                }
            },
            state => untrusted(
                reason::UNTRUSTED_IMAGE,
                state == container_state::AUDIT,
                settings,
                scope_flags,
            ),
        },
        Process::Host => match origin {
            Origin::OutsideScopes | Origin::OwnLayer => Decision::Allow,
            Origin::Undetermined { reason } => untrusted(reason, false, settings, scope_flags),
            Origin::OwnWritable => drift_rule(settings, scope_flags),
            Origin::Layer { state } => match state {
                layer_state::VERIFIED => Decision::Allow,
                layer_state::WRITABLE => drift_rule(settings, scope_flags),
                state => untrusted(
                    reason::UNVERIFIED_LAYER,
                    state == layer_state::AUDIT,
                    settings,
                    scope_flags,
                ),
            },
        },
    }
}

/// An untrusted decision with the mode that applies: a self-test scope always enforces, an
/// audit-only layer or container always audits, anything else follows the global mode.
#[inline(always)]
const fn untrusted(
    reason: u32,
    audit_only: bool,
    settings: &Settings,
    scope_flags: u32,
) -> Decision {
    let mode = if scope_flags & scope_flags::ALWAYS_ENFORCE != 0 {
        mode::ENFORCE
    } else if audit_only {
        mode::AUDIT
    } else {
        settings.mode
    };
    Decision::Untrusted { reason, mode }
}

/// Executing what was written at run time.
#[inline(always)]
const fn drift_rule(settings: &Settings, scope_flags: u32) -> Decision {
    if settings.drift == drift::ALLOW {
        Decision::Allow
    } else {
        untrusted(reason::DRIFT, false, settings, scope_flags)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with no padding holes (sizes asserted above).
    unsafe impl aya::Pod for super::DevIno {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DecisionEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENFORCING: Settings = Settings {
        mode: mode::ENFORCE,
        drift: drift::DENY,
        abi: ABI_VERSION,
        outside_image: outside_image::ALLOW,
    };

    fn denied(reason: u32) -> Decision {
        Decision::Untrusted {
            reason,
            mode: mode::ENFORCE,
        }
    }

    #[test]
    fn an_untrusted_container_runs_nothing_not_even_verified_layers() {
        for state in [0, container_state::UNTRUSTED] {
            let process = Process::Container { state };
            for origin in [
                Origin::OwnLayer,
                Origin::OwnWritable,
                Origin::OutsideScopes,
                Origin::Layer {
                    state: layer_state::VERIFIED,
                },
            ] {
                assert_eq!(
                    decide(process, origin, &ENFORCING, 0),
                    denied(reason::UNTRUSTED_IMAGE),
                    "{process:?} {origin:?}"
                );
            }
        }
        let audited = decide(
            Process::Container {
                state: container_state::AUDIT,
            },
            Origin::OwnLayer,
            &ENFORCING,
            0,
        );
        assert_eq!(
            audited,
            Decision::Untrusted {
                reason: reason::UNTRUSTED_IMAGE,
                mode: mode::AUDIT
            }
        );
        assert!(audited.allows());
    }

    #[test]
    fn a_trusted_container_runs_its_own_layers_drift_and_outside_follow_settings() {
        let trusted = Process::Container {
            state: container_state::TRUSTED,
        };
        assert_eq!(
            decide(trusted, Origin::OwnLayer, &ENFORCING, 0),
            Decision::Allow
        );
        assert_eq!(
            decide(trusted, Origin::OwnWritable, &ENFORCING, 0),
            denied(reason::DRIFT)
        );
        assert_eq!(
            decide(trusted, Origin::OutsideScopes, &ENFORCING, 0),
            Decision::Allow,
            "outside_image = allow"
        );
        let strict = Settings {
            outside_image: outside_image::DENY,
            drift: drift::ALLOW,
            ..ENFORCING
        };
        assert_eq!(
            decide(trusted, Origin::OwnWritable, &strict, 0),
            Decision::Allow
        );
        for origin in [
            Origin::OutsideScopes,
            Origin::Layer {
                state: layer_state::VERIFIED,
            },
        ] {
            assert_eq!(
                decide(trusted, origin, &strict, 0),
                denied(reason::OUTSIDE_IMAGE)
            );
        }
        assert_eq!(
            decide(
                trusted,
                Origin::Undetermined {
                    reason: reason::WALK_LIMIT
                },
                &ENFORCING,
                0
            ),
            denied(reason::WALK_LIMIT)
        );
    }

    #[test]
    fn a_scope_s_outside_image_overrides_the_global_setting() {
        let allowing = Settings {
            outside_image: outside_image::ALLOW,
            ..ENFORCING
        };
        let denying = Settings {
            outside_image: outside_image::DENY,
            ..ENFORCING
        };
        let deny_here = Process::Container {
            state: container_state::TRUSTED | container_state::OUTSIDE_SET,
        };
        let allow_here = Process::Container {
            state: container_state::TRUSTED
                | container_state::OUTSIDE_SET
                | container_state::OUTSIDE_ALLOW,
        };
        assert_eq!(
            decide(deny_here, Origin::OutsideScopes, &allowing, 0),
            denied(reason::OUTSIDE_IMAGE)
        );
        assert_eq!(
            decide(allow_here, Origin::OutsideScopes, &denying, 0),
            Decision::Allow
        );
        assert_eq!(
            decide(deny_here, Origin::OwnLayer, &allowing, 0),
            Decision::Allow,
            "flags never change what the own layers may do"
        );
        let untrusted_flagged = Process::Container {
            state: container_state::UNTRUSTED
                | container_state::OUTSIDE_SET
                | container_state::OUTSIDE_ALLOW,
        };
        assert_eq!(
            decide(untrusted_flagged, Origin::OutsideScopes, &allowing, 0),
            denied(reason::UNTRUSTED_IMAGE)
        );
    }

    #[test]
    fn host_processes_keep_the_layer_rule() {
        let host = Process::Host;
        let layer = |state| Origin::Layer { state };
        assert_eq!(
            decide(host, Origin::OutsideScopes, &ENFORCING, 0),
            Decision::Allow
        );
        assert_eq!(
            decide(host, layer(layer_state::VERIFIED), &ENFORCING, 0),
            Decision::Allow
        );
        assert_eq!(
            decide(host, layer(0), &ENFORCING, 0),
            denied(reason::UNVERIFIED_LAYER)
        );
        assert_eq!(
            decide(host, layer(layer_state::WRITABLE), &ENFORCING, 0),
            denied(reason::DRIFT)
        );
        assert_eq!(
            decide(host, layer(layer_state::AUDIT), &ENFORCING, 0),
            Decision::Untrusted {
                reason: reason::UNVERIFIED_LAYER,
                mode: mode::AUDIT
            }
        );
        let audit = Settings {
            mode: mode::AUDIT,
            ..ENFORCING
        };
        assert_eq!(
            decide(host, layer(0), &audit, scope_flags::ALWAYS_ENFORCE),
            denied(reason::UNVERIFIED_LAYER),
            "a self-test scope enforces in audit mode"
        );
        assert!(decide(host, layer(0), &audit, 0).allows());
        assert_eq!(
            decide(host, layer(0), &Settings::default(), 0),
            denied(reason::UNVERIFIED_LAYER),
            "an unset settings entry fails closed"
        );
    }

    #[test]
    fn kernel_dev_converts_userspace_encoding() {
        // makedev(8, 1) = 0x801 → MKDEV(8, 1) = 8 << 20 | 1
        assert_eq!(kernel_dev(0x801), (8 << 20) | 1);
        // makedev(259, 300): major 259, minor 300 → glibc encoding
        let st_dev: u64 = ((259 & 0xfff) << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 300);
        assert_eq!(kernel_dev(0), 0);
    }
}
