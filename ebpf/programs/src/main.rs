//! imagegate's BPF LSM programs.
//!
//! They deny executing, or mapping executable, a file whose bytes come from a containerd layer
//! snapshot (`<snapshots>/<id>/fs`) that the daemon has not marked verified. A file is judged
//! only if its layer directory's grandparent is a configured scope (`SCOPES`): everything else,
//! host binaries and other overlays included, is allowed without an event.
//!
//! How the layer is found (measured on Linux 6.1 and 6.12, see docs/enforcement.md): overlayfs
//! opens the real ("backing") file of an exec'd overlay file with `__FMODE_EXEC`, and `file_open`
//! sees that open. From the real inode, its first dentry alias and a bounded walk up `d_parent`
//! reach the directory whose parent's parent is a scope: that directory is the layer. 6.1 gives
//! the backing file a fake (overlay) path, so the walk starts from the inode, not `f_path`.
//!
//! Kernel requirements: `CONFIG_BPF_LSM=y` and `bpf` in the active LSM list (5.7+).
//! Struct offsets come from the running kernel's BTF through the `OFFSETS` global (Rust eBPF has
//! no CO-RE relocations); the daemon refuses to load the programs without them.
//!
//! Failure policy, per hook: a file on a scope's device whose layer cannot be determined (the
//! walk hits its bound, a kernel read fails, the inode has no dentry) is treated as unverified:
//! denied in enforce mode. A file on any other device is out of scope and allowed.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        helpers::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
            bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        },
        macros::{lsm, map},
        maps::{Array, HashMap, PerCpuArray, RingBuf},
        programs::LsmContext,
    };
    use imagegate_common::{
        drift, hook, layer_state, mode, offset_flags, reason, scope_flags, stats, verdict,
        DecisionEvent, DevIno, KernelOffsets, Settings, FMODE_EXEC_FLAG, MAX_LAYERS,
        MAX_OVERLAY_NESTING, MAX_SCOPES, MAX_WALK_DEPTH, OVERLAYFS_SUPER_MAGIC, PROT_EXEC, VM_EXEC,
    };

    const EPERM: i32 = 1;

    /// Offsets into kernel structures, from BTF; written by the loader before load.
    #[unsafe(no_mangle)]
    static OFFSETS: KernelOffsets = KernelOffsets {
        file_f_flags: 0,
        file_f_inode: 0,
        file_private_data: 0,
        inode_i_sb: 0,
        inode_i_ino: 0,
        inode_i_dentry: 0,
        dentry_d_alias: 0,
        dentry_d_parent: 0,
        dentry_d_inode: 0,
        sb_s_dev: 0,
        sb_s_magic: 0,
        vma_vm_file: 0,
        vma_vm_flags: 0,
        task_mm: 0,
        mm_exe_file: 0,
        ovl_file_realfile: 0,
        flags: 0,
        _pad: 0,
    };

    #[map(name = "IG_LAYERS")]
    static LAYERS: HashMap<DevIno, u32> = HashMap::pinned(MAX_LAYERS, 0);
    #[map(name = "IG_SCOPES")]
    static SCOPES: HashMap<DevIno, u32> = HashMap::pinned(MAX_SCOPES, 0);
    #[map(name = "IG_SCOPE_DEVS")]
    static SCOPE_DEVS: HashMap<u64, u32> = HashMap::pinned(MAX_SCOPES, 0);
    #[map(name = "IG_SETTINGS")]
    static SETTINGS: Array<Settings> = Array::pinned(1, 0);
    #[map(name = "IG_EVENTS")]
    static EVENTS: RingBuf = RingBuf::pinned(imagegate_common::EVENTS_BYTES, 0);
    #[map(name = "IG_STATS")]
    static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::COUNT, 0);

    /// Reads one offset from the `OFFSETS` global (volatile: the loader rewrites `.rodata`).
    macro_rules! off {
        ($field:ident) => {
            unsafe { core::ptr::read_volatile(&OFFSETS.$field) as usize }
        };
    }

    /// Reads a `T` at `base + offset` from kernel memory.
    #[inline(always)]
    fn read<T>(base: usize, offset: usize) -> Result<T, ()> {
        if base == 0 {
            return Err(());
        }
        unsafe { bpf_probe_read_kernel((base + offset) as *const T) }.map_err(|_| ())
    }

    /// The outcome of judging one file.
    enum Judgement {
        /// Not under any scope: allow, no event.
        OutOfScope,
        /// In a verified layer (or drift allowed): allow, no event.
        Trusted,
        /// Untrusted, with the reason, the layer if it was found and the scope's flags.
        Untrusted {
            reason: u32,
            layer: DevIno,
            scope: u32,
            /// The layer is marked audit-only (`layer_state::AUDIT`).
            audit_layer: bool,
        },
    }

    #[inline(always)]
    fn count(index: u32) {
        if let Some(counter) = STATS.get_ptr_mut(index) {
            unsafe { *counter += 1 };
        }
    }

    /// Finds the layer of `inode` and judges it against the layer table.
    #[inline(always)]
    fn judge(inode: usize, file: &mut DevIno) -> Judgement {
        let Ok(sb) = read::<usize>(inode, off!(inode_i_sb)) else {
            return Judgement::OutOfScope;
        };
        let Ok(dev) = read::<u32>(sb, off!(sb_s_dev)) else {
            return Judgement::OutOfScope;
        };
        let dev = u64::from(dev);
        if unsafe { SCOPE_DEVS.get(&dev) }.is_none() {
            return Judgement::OutOfScope;
        }
        count(stats::JUDGED);
        file.dev = dev;
        file.ino = read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0);
        let untrusted = |reason| Judgement::Untrusted {
            reason,
            layer: DevIno::default(),
            scope: 0,
            audit_layer: false,
        };
        // `i_dentry.first` is the alias list node inside the first dentry.
        let Ok(alias) = read::<usize>(inode, off!(inode_i_dentry)) else {
            return untrusted(reason::UNREADABLE);
        };
        if alias == 0 {
            return untrusted(reason::UNREADABLE);
        }
        let mut current = alias - off!(dentry_d_alias);
        let mut layer = None;
        let mut scope = 0;
        for _ in 0..MAX_WALK_DEPTH {
            let Ok(parent) = read::<usize>(current, off!(dentry_d_parent)) else {
                return untrusted(reason::UNREADABLE);
            };
            if parent == current {
                // The file system's root: no scope above, so not a layer file.
                return Judgement::OutOfScope;
            }
            let Ok(grandparent) = read::<usize>(parent, off!(dentry_d_parent)) else {
                return untrusted(reason::UNREADABLE);
            };
            if grandparent == parent {
                return Judgement::OutOfScope;
            }
            let Ok(gp_inode) = read::<usize>(grandparent, off!(dentry_d_inode)) else {
                return untrusted(reason::UNREADABLE);
            };
            let Ok(gp_ino) = read::<u64>(gp_inode, off!(inode_i_ino)) else {
                return untrusted(reason::UNREADABLE);
            };
            if let Some(flags) = unsafe { SCOPES.get(&DevIno { dev, ino: gp_ino }) } {
                layer = Some(current);
                scope = *flags;
                break;
            }
            current = parent;
        }
        let Some(layer_dentry) = layer else {
            return untrusted(reason::WALK_LIMIT);
        };
        let Ok(layer_inode) = read::<usize>(layer_dentry, off!(dentry_d_inode)) else {
            return untrusted(reason::UNREADABLE);
        };
        let Ok(layer_ino) = read::<u64>(layer_inode, off!(inode_i_ino)) else {
            return untrusted(reason::UNREADABLE);
        };
        let layer = DevIno {
            dev,
            ino: layer_ino,
        };
        match unsafe { LAYERS.get(&layer) }.copied() {
            Some(layer_state::VERIFIED) => Judgement::Trusted,
            Some(layer_state::WRITABLE) => {
                if settings().drift == drift::ALLOW {
                    Judgement::Trusted
                } else {
                    Judgement::Untrusted {
                        reason: reason::DRIFT,
                        layer,
                        scope,
                        audit_layer: false,
                    }
                }
            }
            state => Judgement::Untrusted {
                reason: reason::UNVERIFIED_LAYER,
                layer,
                scope,
                audit_layer: state == Some(layer_state::AUDIT),
            },
        }
    }

    #[inline(always)]
    fn settings() -> Settings {
        // A missing entry reads as zero: enforce, drift denied (fail closed).
        SETTINGS.get(0).copied().unwrap_or_default()
    }

    /// Judges `inode` for `hook`, reports anything but a plain allow and returns the hook's answer.
    #[inline(always)]
    fn decide(inode: usize, hook: u32) -> i32 {
        let mut file = DevIno::default();
        let (reason, layer, scope, audit_layer) = match judge(inode, &mut file) {
            Judgement::OutOfScope | Judgement::Trusted => return 0,
            Judgement::Untrusted {
                reason,
                layer,
                scope,
                audit_layer,
            } => (reason, layer, scope, audit_layer),
        };
        let mode = if scope & scope_flags::ALWAYS_ENFORCE != 0 {
            mode::ENFORCE
        } else if audit_layer {
            mode::AUDIT
        } else {
            settings().mode
        };
        let (verdict, answer) = if mode == mode::AUDIT {
            count(stats::AUDITED);
            (verdict::AUDIT, 0)
        } else {
            count(stats::DENIED);
            (verdict::DENIED, -EPERM)
        };
        report(&DecisionEvent {
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
            file,
            layer,
            pid: bpf_get_current_pid_tgid() as u32,
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            hook,
            verdict,
            reason,
            mode,
            comm: bpf_get_current_comm().unwrap_or_default(),
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        });
        answer
    }

    #[inline(always)]
    fn report(event: &DecisionEvent) {
        match EVENTS.reserve::<DecisionEvent>(0) {
            Some(mut entry) => {
                entry.write(*event);
                entry.submit(0);
            }
            None => count(stats::EVENTS_LOST),
        }
    }

    #[inline(always)]
    fn offsets_valid() -> bool {
        off!(flags) as u32 & offset_flags::VALID != 0
    }

    #[inline(always)]
    fn is_overlay(inode: usize) -> bool {
        read::<usize>(inode, off!(inode_i_sb))
            .and_then(|sb| read::<u64>(sb, off!(sb_s_magic)))
            .is_ok_and(|magic| magic & 0xffff_ffff == OVERLAYFS_SUPER_MAGIC)
    }

    /// Follows overlayfs files to the real file whose bytes are mapped. Returns the real file's
    /// inode, or 0 when it cannot be found (then the caller judges the last inode it has).
    #[inline(always)]
    fn real_inode(mut file: usize) -> usize {
        let mut inode = read::<usize>(file, off!(file_f_inode)).unwrap_or(0);
        for _ in 0..MAX_OVERLAY_NESTING {
            if inode == 0 || !is_overlay(inode) {
                break;
            }
            let Ok(private) = read::<usize>(file, off!(file_private_data)) else {
                break;
            };
            file = if off!(flags) as u32 & offset_flags::OVL_FILE != 0 {
                read::<usize>(private, off!(ovl_file_realfile)).unwrap_or(0)
            } else {
                private
            };
            let Ok(next) = read::<usize>(file, off!(file_f_inode)) else {
                break;
            };
            inode = next;
        }
        inode
    }

    /// Exec, scripts and the ELF interpreter: every `open_exec` carries `__FMODE_EXEC`. For an
    /// overlayfs file, the overlay open is skipped and the backing (real) open is judged.
    /// Fails closed for files on a scope's device (see the crate doc).
    #[lsm(hook = "file_open")]
    pub fn file_open(ctx: LsmContext) -> i32 {
        let previous: i32 = ctx.arg(1);
        if previous != 0 {
            return previous;
        }
        if !offsets_valid() {
            return 0;
        }
        let file: usize = ctx.arg(0);
        let Ok(flags) = read::<u32>(file, off!(file_f_flags)) else {
            return 0;
        };
        if flags & FMODE_EXEC_FLAG == 0 {
            return 0;
        }
        let Ok(inode) = read::<usize>(file, off!(file_f_inode)) else {
            return 0;
        };
        if is_overlay(inode) {
            return 0;
        }
        decide(inode, hook::EXEC)
    }

    /// `mmap` with `PROT_EXEC` (shared libraries, `LD_PRELOAD`, `dlopen`, JIT-free code loading).
    /// The kernel passes the overlay file here; its real file comes from `private_data`.
    /// Mapping the process's own executable is skipped: its exec was judged by `file_open`.
    #[lsm(hook = "mmap_file")]
    pub fn mmap_file(ctx: LsmContext) -> i32 {
        let previous: i32 = ctx.arg(4);
        if previous != 0 {
            return previous;
        }
        if !offsets_valid() {
            return 0;
        }
        let file: usize = ctx.arg(0);
        let prot: u64 = ctx.arg(2);
        if file == 0 || prot & PROT_EXEC == 0 {
            return 0;
        }
        let task = unsafe { bpf_get_current_task() } as usize;
        let exe = read::<usize>(task, off!(task_mm))
            .and_then(|mm| read::<usize>(mm, off!(mm_exe_file)))
            .unwrap_or(0);
        if exe == file {
            return 0;
        }
        let inode = real_inode(file);
        if inode == 0 {
            return 0;
        }
        decide(inode, hook::MMAP)
    }

    /// `mprotect` that makes a file mapping executable. `vm_file` is the real file already.
    #[lsm(hook = "file_mprotect")]
    pub fn file_mprotect(ctx: LsmContext) -> i32 {
        let previous: i32 = ctx.arg(3);
        if previous != 0 {
            return previous;
        }
        if !offsets_valid() {
            return 0;
        }
        let vma: usize = ctx.arg(0);
        let prot: u64 = ctx.arg(2);
        if prot & PROT_EXEC == 0 {
            return 0;
        }
        let Ok(vm_flags) = read::<u64>(vma, off!(vma_vm_flags)) else {
            return 0;
        };
        if vm_flags & VM_EXEC != 0 {
            return 0;
        }
        let Ok(file) = read::<usize>(vma, off!(vma_vm_file)) else {
            return 0;
        };
        if file == 0 {
            return 0;
        }
        let inode = real_inode(file);
        if inode == 0 {
            return 0;
        }
        decide(inode, hook::MPROTECT)
    }

    /// The kernel refuses LSM programs without a GPL-compatible licence.
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
