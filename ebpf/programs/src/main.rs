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
//! Devices are compared as `stat` reports them (`st_dev`), which the daemon keys by: the super
//! block's `s_dev`, except on btrfs, whose subvolumes each have their own (`anon_dev`).
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
        container_state, hook, layer_state, mode, offset_flags, reason, scope_dev, stats, verdict,
        Decision, DecisionEvent, DevIno, KernelOffsets, Origin, Process, Settings,
        BTRFS_SUPER_MAGIC, FMODE_EXEC_FLAG, MAX_CONTAINERS, MAX_IMAGE_LAYERS, MAX_LAYERS,
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
        inode_i_generation: 0,
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
        task_fs: 0,
        fs_root_mnt: 0,
        fs_root_dentry: 0,
        vfsmount_mnt_root: 0,
        dentry_d_sb: 0,
        sb_s_fs_info: 0,
        ovl_fs_numlayer: 0,
        ovl_fs_layers: 0,
        ovl_layer_mnt: 0,
        ovl_layer_size: 0,
        btrfs_inode_vfs_inode: 0,
        btrfs_inode_root: 0,
        btrfs_root_anon_dev: 0,
        flags: 0,
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
    #[map(name = "IG_CONTAINERS")]
    static CONTAINERS: HashMap<DevIno, u32> = HashMap::pinned(MAX_CONTAINERS, 0);

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

    #[inline(always)]
    fn count(index: u32) {
        if let Some(counter) = STATS.get_ptr_mut(index) {
            unsafe { *counter += 1 };
        }
    }

    /// Where a file lives, before the asking process is taken into account.
    struct Located {
        /// The file (zero outside the scopes' devices).
        file: DevIno,
        /// Its layer directory's dentry and identity, when found.
        layer_dentry: usize,
        layer: DevIno,
        /// The layer's scope's flags.
        scope: u32,
        /// `None`: not under a scope; `Some(0)`: a layer; `Some(reason)`: on a scope's device
        /// but undetermined.
        under_scope: Option<u32>,
    }

    /// Whether keys on `dev` carry inode generations (see `scope_dev::GENERATION`).
    #[inline(always)]
    fn with_generation(dev: u64) -> bool {
        unsafe { SCOPE_DEVS.get(&dev) }.is_some_and(|flags| flags & scope_dev::GENERATION != 0)
    }

    /// The device `inode` lives on, as `stat` reports it (the daemon keys by `st_dev`): its
    /// super block's `s_dev`, except on btrfs, where each subvolume has a device number of its
    /// own (`btrfs_getattr` reports `BTRFS_I(inode)->root->anon_dev`).
    #[inline(always)]
    fn inode_dev(inode: usize) -> Result<u64, ()> {
        let sb = read::<usize>(inode, off!(inode_i_sb))?;
        if off!(flags) as u32 & offset_flags::BTRFS != 0
            && read::<u64>(sb, off!(sb_s_magic))? & 0xffff_ffff == BTRFS_SUPER_MAGIC
        {
            // `inode` is the `vfs_inode` member of a `struct btrfs_inode`.
            let btrfs_inode = inode.wrapping_sub(off!(btrfs_inode_vfs_inode));
            let root = read::<usize>(btrfs_inode, off!(btrfs_inode_root))?;
            return Ok(u64::from(read::<u32>(root, off!(btrfs_root_anon_dev))?));
        }
        Ok(u64::from(read::<u32>(sb, off!(sb_s_dev))?))
    }

    /// The identity of `inode` on `dev`: its number, and its generation where the device's keys
    /// carry one (so a new directory never matches a removed one's entry).
    #[inline(always)]
    fn inode_key(inode: usize, dev: u64, generation: bool) -> Result<DevIno, ()> {
        let ino = read::<u64>(inode, off!(inode_i_ino))?;
        let generation = if generation {
            read::<u32>(inode, off!(inode_i_generation))?
        } else {
            0
        };
        Ok(DevIno {
            dev,
            ino,
            generation,
            pad: 0,
        })
    }

    /// The identity of `dentry` (its inode on its super block's device).
    #[inline(always)]
    fn dentry_id(dentry: usize) -> Result<DevIno, ()> {
        let inode = read::<usize>(dentry, off!(dentry_d_inode))?;
        let dev = inode_dev(inode)?;
        inode_key(inode, dev, with_generation(dev))
    }

    /// The flags of the scope `dentry` is a layer directory of (`<scope>/<id>/fs`), if any.
    #[inline(always)]
    fn layer_scope(dentry: usize, dev: u64, generation: bool) -> Result<Option<u32>, ()> {
        let parent = read::<usize>(dentry, off!(dentry_d_parent))?;
        if parent == dentry {
            return Ok(None);
        }
        let grandparent = read::<usize>(parent, off!(dentry_d_parent))?;
        if grandparent == parent {
            return Ok(None);
        }
        let gp_inode = read::<usize>(grandparent, off!(dentry_d_inode))?;
        let key = inode_key(gp_inode, dev, generation)?;
        Ok(unsafe { SCOPES.get(&key) }.copied())
    }

    /// Finds the layer directory of `inode`: its first dentry alias and a bounded walk up
    /// `d_parent` to the directory whose grandparent is a scope.
    #[inline(always)]
    fn locate(inode: usize) -> Located {
        let mut located = Located {
            file: DevIno::default(),
            layer_dentry: 0,
            layer: DevIno::default(),
            scope: 0,
            under_scope: None,
        };
        let Ok(dev) = inode_dev(inode) else {
            return located;
        };
        let Some(dev_flags) = (unsafe { SCOPE_DEVS.get(&dev) }).copied() else {
            return located;
        };
        let generation = dev_flags & scope_dev::GENERATION != 0;
        count(stats::JUDGED);
        located.file = DevIno::new(dev, read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0));
        located.under_scope = Some(reason::UNREADABLE);
        // `i_dentry.first` is the alias list node inside the first dentry.
        let Ok(alias) = read::<usize>(inode, off!(inode_i_dentry)) else {
            return located;
        };
        if alias == 0 {
            return located;
        }
        let mut current = alias - off!(dentry_d_alias);
        for _ in 0..MAX_WALK_DEPTH {
            match layer_scope(current, dev, generation) {
                Err(()) => return located,
                Ok(Some(flags)) => {
                    let Ok(layer) = read::<usize>(current, off!(dentry_d_inode))
                        .and_then(|inode| inode_key(inode, dev, generation))
                    else {
                        return located;
                    };
                    located.layer_dentry = current;
                    located.layer = layer;
                    located.scope = flags;
                    located.under_scope = Some(0);
                    return located;
                }
                Ok(None) => {}
            }
            let Ok(parent) = read::<usize>(current, off!(dentry_d_parent)) else {
                return located;
            };
            if parent == current {
                // The file system's root: no scope above, so not a layer file.
                located.under_scope = None;
                return located;
            }
            current = parent;
        }
        located.under_scope = Some(reason::WALK_LIMIT);
        located
    }

    /// The asking task's container, from its root file system (which a container cannot
    /// change: runc pivots into it before the entrypoint's exec).
    struct Root {
        process: Process,
        /// The container's key in `CONTAINERS` (zero for the host).
        key: DevIno,
        /// The overlay's `struct ovl_fs`, for the own-layer comparison (zero otherwise).
        ofs: usize,
        /// The writable layer's directory dentry (zero when read-only).
        upper: usize,
        /// A read-only single-layer root (a bind mount of the layer directory).
        bind_layer: usize,
    }

    const HOST: Root = Root {
        process: Process::Host,
        key: DevIno::new(0, 0),
        ofs: 0,
        upper: 0,
        bind_layer: 0,
    };

    /// `ovl_fs.layers[index].mnt->mnt_root`.
    #[inline(always)]
    fn ovl_layer_root(ofs: usize, index: u32) -> Result<usize, ()> {
        let layers = read::<usize>(ofs, off!(ovl_fs_layers))?;
        let mnt = read::<usize>(
            layers + index as usize * off!(ovl_layer_size),
            off!(ovl_layer_mnt),
        )?;
        if mnt == 0 {
            return Ok(0);
        }
        read::<usize>(mnt, off!(vfsmount_mnt_root))
    }

    /// A read-only root's state comes from its top layer: trusted while a trusted image
    /// contains it (config-only tampering of a read-only container is judged by layers).
    #[inline(always)]
    fn read_only_state(key: &DevIno) -> u32 {
        match unsafe { LAYERS.get(key) }.copied() {
            Some(layer_state::VERIFIED) => container_state::TRUSTED,
            Some(layer_state::AUDIT) => container_state::AUDIT,
            _ => container_state::UNTRUSTED,
        }
    }

    #[inline(always)]
    fn task_root() -> Root {
        let task = unsafe { bpf_get_current_task() } as usize;
        let Ok(fs) = read::<usize>(task, off!(task_fs)) else {
            return HOST;
        };
        let Ok(root) = read::<usize>(fs, off!(fs_root_dentry)) else {
            return HOST;
        };
        let Ok(sb) = read::<usize>(root, off!(dentry_d_sb)) else {
            return HOST;
        };
        let magic = read::<u64>(sb, off!(sb_s_magic)).unwrap_or(0);
        if magic & 0xffff_ffff == OVERLAYFS_SUPER_MAGIC {
            let Ok(ofs) = read::<usize>(sb, off!(sb_s_fs_info)) else {
                return HOST;
            };
            let Ok(upper) = ovl_layer_root(ofs, 0) else {
                return HOST;
            };
            let top = if upper != 0 {
                upper
            } else {
                ovl_layer_root(ofs, 1).unwrap_or(0)
            };
            if top == 0 {
                return HOST;
            }
            let Ok(key) = dentry_id(top) else {
                return HOST;
            };
            // Another runtime's overlay (Docker, podman, runc's own) is not a container we judge.
            let Ok(Some(_)) = layer_scope(top, key.dev, with_generation(key.dev)) else {
                return HOST;
            };
            let state = if upper != 0 {
                unsafe { CONTAINERS.get(&key) }.copied().unwrap_or(0)
            } else {
                read_only_state(&key)
            };
            return Root {
                process: Process::Container { state },
                key,
                ofs,
                upper,
                bind_layer: 0,
            };
        }
        // A one-layer read-only root is a bind mount of the layer directory itself.
        let Ok(mnt) = read::<usize>(fs, off!(fs_root_mnt)) else {
            return HOST;
        };
        let Ok(mnt_root) = read::<usize>(mnt, off!(vfsmount_mnt_root)) else {
            return HOST;
        };
        let Ok(key) = dentry_id(mnt_root) else {
            return HOST;
        };
        match layer_scope(mnt_root, key.dev, with_generation(key.dev)) {
            Ok(Some(_)) => Root {
                process: Process::Container {
                    state: read_only_state(&key),
                },
                key,
                ofs: 0,
                upper: 0,
                bind_layer: mnt_root,
            },
            _ => HOST,
        }
    }

    /// Whether `layer` (a layer directory's dentry) is one of the container root's lower layers.
    #[inline(always)]
    fn is_own_layer(root: &Root, layer: usize) -> bool {
        if root.bind_layer != 0 {
            return root.bind_layer == layer;
        }
        if root.ofs == 0 {
            return false;
        }
        let Ok(count) = read::<u32>(root.ofs, off!(ovl_fs_numlayer)) else {
            return false;
        };
        let mut index = 1;
        while index < count && index <= MAX_IMAGE_LAYERS {
            match ovl_layer_root(root.ofs, index) {
                Ok(found) if found == layer => return true,
                Ok(_) => {}
                Err(()) => return false,
            }
            index += 1;
        }
        false
    }

    #[inline(always)]
    fn settings() -> Settings {
        // A missing entry reads as zero: enforce, drift and outside files denied (fail closed).
        SETTINGS.get(0).copied().unwrap_or_default()
    }

    /// Judges `inode` for `hook` with the shared rule ([`imagegate_common::decide`]), reports
    /// anything but a plain allow and returns the hook's answer.
    #[inline(always)]
    fn decide(inode: usize, hook: u32) -> i32 {
        let located = locate(inode);
        let root = task_root();
        let origin = match located.under_scope {
            None => Origin::OutsideScopes,
            Some(0) => {
                if root.upper != 0 && root.upper == located.layer_dentry {
                    Origin::OwnWritable
                } else if matches!(root.process, Process::Container { .. })
                    && is_own_layer(&root, located.layer_dentry)
                {
                    Origin::OwnLayer
                } else {
                    Origin::Layer {
                        state: unsafe { LAYERS.get(&located.layer) }.copied().unwrap_or(0),
                    }
                }
            }
            Some(reason) => Origin::Undetermined { reason },
        };
        let settings = settings();
        let Decision::Untrusted { reason, mode } =
            imagegate_common::decide(root.process, origin, &settings, located.scope)
        else {
            return 0;
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
            file: located.file,
            layer: located.layer,
            pid: bpf_get_current_pid_tgid() as u32,
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            hook,
            verdict,
            reason,
            mode,
            comm: bpf_get_current_comm().unwrap_or_default(),
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            container: root.key,
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
