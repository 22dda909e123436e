//! The kernel struct offsets the programs read, from the running kernel's BTF, and a check that
//! each LSM hook has the parameters the programs were written for.

use imagegate_common::{offset_flags, KernelOffsets};

use crate::btf::{Btf, BtfError};

/// The hooks' parameter lists as the programs read them (`bpf_lsm_<hook>` in BTF).
const HOOK_PARAMS: &[(&str, &[&str])] = &[
    ("bpf_lsm_file_open", &["file"]),
    ("bpf_lsm_mmap_file", &["file", "reqprot", "prot", "flags"]),
    ("bpf_lsm_file_mprotect", &["vma", "reqprot", "prot"]),
];

/// Why the offsets could not be found.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("kernel BTF lacks what the programs need")]
    Btf(#[from] BtfError),
    #[error("LSM hook {function} has parameters {found:?}, the programs expect {expected:?}")]
    HookSignature {
        function: &'static str,
        found: Vec<String>,
        expected: Vec<&'static str>,
    },
}

/// Reads every offset from `vmlinux` and, for the file systems' own structs, from their module
/// BTF (`modules`: overlayfs's, and btrfs's when it is loaded; a built-in file system's types are
/// in vmlinux). On kernels whose overlayfs keeps a `struct ovl_file { realfile, upperfile }` in
/// `file.private_data` (6.13 and later) the programs follow `realfile`; before that
/// `private_data` is the real file itself. Without btrfs's types the programs key btrfs files by
/// the super block's device, which no btrfs scope uses: the daemon refuses such scopes
/// ([`btrfs_types_present`]) and the self-test on the scope's own file system fails.
pub fn from_btf(vmlinux: &Btf, modules: &[Btf]) -> Result<KernelOffsets, OffsetsError> {
    for (function, expected) in HOOK_PARAMS {
        let found = vmlinux.function_params(function)?;
        if found
            .iter()
            .map(String::as_str)
            .ne(expected.iter().copied())
        {
            return Err(OffsetsError::HookSignature {
                function,
                found,
                expected: expected.to_vec(),
            });
        }
    }
    let at = |structure: &str, member: &str| vmlinux.member_offset(structure, member);
    // `dentry.d_alias` lived in the `d_u` union for years; newer kernels may move it out.
    let d_alias = at("dentry", "d_u.d_alias").or_else(|_| at("dentry", "d_alias"))?;
    let holding = |name: &str| {
        std::iter::once(vmlinux)
            .chain(modules)
            .find(|btf| btf.has_struct(name))
    };
    let ovl = holding("ovl_file");
    // The container's root: `struct ovl_fs` and `struct ovl_layer`.
    let ovl_fs = holding("ovl_fs").ok_or_else(|| BtfError::NoStruct {
        name: "ovl_fs".to_owned(),
    })?;
    let (ovl_file_realfile, ovl_flag) = match ovl {
        Some(btf) => (
            btf.member_offset("ovl_file", "realfile")?,
            offset_flags::OVL_FILE,
        ),
        None => (0, 0),
    };
    let (btrfs, btrfs_flag) = match holding("btrfs_inode") {
        Some(btf) => (
            [
                btf.member_offset("btrfs_inode", "vfs_inode")?,
                btf.member_offset("btrfs_inode", "root")?,
                btf.member_offset("btrfs_root", "anon_dev")?,
            ],
            offset_flags::BTRFS,
        ),
        None => ([0; 3], 0),
    };
    Ok(KernelOffsets {
        file_f_flags: at("file", "f_flags")?,
        file_f_inode: at("file", "f_inode")?,
        file_private_data: at("file", "private_data")?,
        inode_i_sb: at("inode", "i_sb")?,
        inode_i_ino: at("inode", "i_ino")?,
        inode_i_generation: at("inode", "i_generation")?,
        inode_i_dentry: at("inode", "i_dentry")?,
        dentry_d_alias: d_alias,
        dentry_d_parent: at("dentry", "d_parent")?,
        dentry_d_inode: at("dentry", "d_inode")?,
        sb_s_dev: at("super_block", "s_dev")?,
        sb_s_magic: at("super_block", "s_magic")?,
        vma_vm_file: at("vm_area_struct", "vm_file")?,
        vma_vm_flags: at("vm_area_struct", "vm_flags")?,
        task_mm: at("task_struct", "mm")?,
        mm_exe_file: at("mm_struct", "exe_file")?,
        ovl_file_realfile,
        task_fs: at("task_struct", "fs")?,
        fs_root_mnt: at("fs_struct", "root.mnt")?,
        fs_root_dentry: at("fs_struct", "root.dentry")?,
        vfsmount_mnt_root: at("vfsmount", "mnt_root")?,
        dentry_d_sb: at("dentry", "d_sb")?,
        sb_s_fs_info: at("super_block", "s_fs_info")?,
        ovl_fs_numlayer: ovl_fs.member_offset("ovl_fs", "numlayer")?,
        ovl_fs_layers: ovl_fs.member_offset("ovl_fs", "layers")?,
        ovl_layer_mnt: ovl_fs.member_offset("ovl_layer", "mnt")?,
        ovl_layer_size: ovl_fs.struct_size("ovl_layer")?,
        btrfs_inode_vfs_inode: btrfs[0],
        btrfs_inode_root: btrfs[1],
        btrfs_root_anon_dev: btrfs[2],
        flags: offset_flags::VALID | ovl_flag | btrfs_flag,
    })
}

/// The module BTF the offsets may come from: overlayfs's and btrfs's, for those loaded as
/// modules (built-in ones are in vmlinux; a module not loaded has no BTF and no files).
pub fn module_btf(vmlinux: &Btf) -> Result<Vec<Btf>, BtfError> {
    let mut modules = Vec::new();
    for name in ["overlay", "btrfs"] {
        modules.extend(vmlinux.module(name)?);
    }
    Ok(modules)
}

/// Whether this kernel's BTF has btrfs's inode and subvolume types, which the programs need to
/// key btrfs files by the device `stat` reports.
pub fn btrfs_types_present() -> bool {
    Btf::vmlinux().is_ok_and(|vmlinux| {
        vmlinux.has_struct("btrfs_inode")
            || vmlinux
                .module("btrfs")
                .ok()
                .flatten()
                .is_some_and(|btrfs| btrfs.has_struct("btrfs_inode"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_has_every_offset() {
        let Ok(vmlinux) = Btf::vmlinux() else {
            eprintln!("skipping: no readable /sys/kernel/btf/vmlinux");
            return;
        };
        let overlay = vmlinux
            .module("overlay")
            .expect("overlay module BTF parses");
        let offsets = from_btf(&vmlinux, overlay.as_slice()).expect("offsets");
        assert_eq!(
            offsets.flags & offset_flags::BTRFS != 0,
            btrfs_types_present()
        );
        assert_ne!(offsets.flags & offset_flags::VALID, 0);
        // Distinct members of one struct cannot share an offset.
        assert_ne!(offsets.file_f_flags, offsets.file_f_inode);
        assert_ne!(offsets.dentry_d_parent, offsets.dentry_d_inode);
        // 6.18 (this machine) has `struct ovl_file` (kernel-facts); it is in vmlinux when
        // overlayfs is built in, as it is here.
        if vmlinux.has_struct("ovl_file") {
            assert_ne!(offsets.flags & offset_flags::OVL_FILE, 0);
        }
        // btrfs is built in here too: its inode embeds the VFS inode after its own fields.
        if vmlinux.has_struct("btrfs_inode") {
            assert_ne!(offsets.flags & offset_flags::BTRFS, 0);
            assert_ne!(offsets.btrfs_inode_vfs_inode, offsets.btrfs_inode_root);
            assert_ne!(offsets.btrfs_root_anon_dev, 0);
        }
    }
}
