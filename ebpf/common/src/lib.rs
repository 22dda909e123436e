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
    /// Devices that hold a scope directory (fast path: any other device is out of scope).
    pub const SCOPE_DEVS: &str = "IG_SCOPE_DEVS";
    /// One `Settings` entry: mode and drift policy.
    pub const SETTINGS: &str = "IG_SETTINGS";
    /// Decision events (`DecisionEvent`), a ring buffer.
    pub const EVENTS: &str = "IG_EVENTS";
    /// Per-CPU counters, indexed by the `stats` constants.
    pub const STATS: &str = "IG_STATS";
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
/// Capacity of the scope map.
pub const MAX_SCOPES: u32 = 16;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// How many `d_parent` steps the layer walk takes before it gives up. A file nested deeper than
/// this on a scope's device is denied: image authors control path depth, so a walk that cannot
/// decide must not allow.
pub const MAX_WALK_DEPTH: u32 = 64;

/// A file system object's identity: the kernel's internal device number (`MAJOR << 20 | MINOR`,
/// not the userspace `st_dev` encoding) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DevIno {
    /// `super_block.s_dev` in the kernel's encoding.
    pub dev: u64,
    /// `inode.i_ino`.
    pub ino: u64,
}

/// Converts a userspace `st_dev` (glibc's `makedev` encoding) to the kernel's internal `dev_t`.
#[must_use]
pub const fn kernel_dev(st_dev: u64) -> u64 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    ((major & 0xfff) << 20) | (minor & 0xf_ffff)
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

/// Enforcement mode. Zero is enforce, so an unset `SETTINGS` entry fails closed.
pub mod mode {
    /// Deny and report.
    pub const ENFORCE: u32 = 0;
    /// Report and allow.
    pub const AUDIT: u32 = 1;
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
pub const ABI_VERSION: u32 = 2;

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
    /// `offset_flags` bits.
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Bits of `KernelOffsets::flags`.
pub mod offset_flags {
    /// An overlayfs file's `private_data` points to a `struct ovl_file` (6.13+), not the real file.
    pub const OVL_FILE: u32 = 1;
    /// Set by the daemon once every offset came from BTF. The daemon never loads the programs
    /// without it; the programs check it so a mis-built object cannot read at offset zero.
    pub const VALID: u32 = 2;
}

/// `__FMODE_EXEC` in `file.f_flags`: the file was opened by `open_exec` (exec, interpreter).
pub const FMODE_EXEC_FLAG: u32 = 0x20;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 0x4;
/// `VM_EXEC` in `vm_area_struct.vm_flags`.
pub const VM_EXEC: u64 = 0x4;
/// `OVERLAYFS_SUPER_MAGIC`.
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
/// How many overlayfs layers deep `mmap_file`/`file_mprotect` follow `private_data` to a real file.
pub const MAX_OVERLAY_NESTING: u32 = 4;

const _: () = assert!(core::mem::size_of::<DevIno>() == 16);
const _: () = assert!(core::mem::size_of::<Settings>() == 12);
const _: () = assert!(core::mem::size_of::<DecisionEvent>() == 88);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 72);

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
    use super::kernel_dev;

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
