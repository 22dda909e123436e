//! `imagegate doctor`: what this kernel can do for imagegate, one capability per line, each
//! measured rather than assumed (a program is loaded, a mark is placed).

use std::path::Path;

use crate::{
    btf::Btf,
    enforce::bpf::{self, offsets},
    telemetry::error_chain,
};

/// The result of one check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub capability: &'static str,
    /// Whether it is there.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

fn check(capability: &'static str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            capability,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            capability,
            ok: false,
            detail,
        },
    }
}

/// Whether containerd's pulls reach imagegate's verifier (containerd 2.x's image verifier hook,
/// [`crate::pullgate::hook_report`]): containerd's version from `containerd --version`, its
/// configuration from `config`.
#[must_use]
pub fn pull_verifier(containerd: &Path, config: &Path) -> Check {
    let text = std::fs::read_to_string(config).ok();
    let report = crate::pullgate::hook_report(
        crate::pullgate::containerd_version(containerd),
        text.as_deref(),
        &crate::pullgate::runs_imagegate,
    );
    Check {
        capability: "pull_verifier",
        ok: report.ok,
        detail: report.detail,
    }
}

/// Runs every check.
#[must_use]
pub fn run(pin_dir: &Path) -> Vec<Check> {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut checks = vec![Check {
        capability: "kernel",
        ok: true,
        detail: kernel,
    }];
    let vmlinux = Btf::vmlinux();
    checks.push(check(
        "btf",
        vmlinux
            .as_ref()
            .map(|_| "/sys/kernel/btf/vmlinux readable".to_owned())
            .map_err(|e| format!("{e}")),
    ));
    if let Ok(vmlinux) = &vmlinux {
        let modules = offsets::module_btf(vmlinux).unwrap_or_default();
        checks.push(check(
            "btf_offsets",
            offsets::from_btf(vmlinux, &modules)
                .map(|o| {
                    format!(
                        "all found (file.f_inode={}, dentry.d_parent={}, ovl_fs.layers={}, sizeof(ovl_layer)={}, private_data={}, btrfs={})",
                        o.file_f_inode,
                        o.dentry_d_parent,
                        o.ovl_fs_layers,
                        o.ovl_layer_size,
                        if o.flags & imagegate_common::offset_flags::OVL_FILE != 0 {
                            "struct ovl_file"
                        } else {
                            "real file"
                        },
                        if o.flags & imagegate_common::offset_flags::BTRFS != 0 {
                            "subvolume devices"
                        } else {
                            "no btrfs types (btrfs scopes refused)"
                        }
                    )
                })
                .map_err(|e| error_chain(&e)),
        ));
    }
    checks.push(check(
        "bpf_lsm_active",
        bpf::lsm_active()
            .map(|()| "bpf is in the LSM list".to_owned())
            .map_err(|e| e.to_string()),
    ));
    checks.push(check(
        "bpf_lsm_programs_load",
        bpf::probe_load().map_err(|e| error_chain(&e)),
    ));
    checks.push(check("overlayfs", overlay_report()));
    checks.push(check("fanotify_exec_permission", fanotify_probe()));
    if checks.last().is_some_and(|c| c.ok) {
        checks.push(check(
            "fanotify_strategy",
            crate::enforce::fanotify::probe::report(),
        ));
    }
    checks.push(check("process_roots", process_roots()));
    checks.push(backend_choice(&checks));
    checks.push(Check {
        capability: "bpf_backend_installed",
        ok: bpf::installed(pin_dir),
        detail: if bpf::installed(pin_dir) {
            format!("programs pinned under {}", pin_dir.display())
        } else {
            format!("nothing pinned under {}", pin_dir.display())
        },
    });
    checks
}

/// Whether this process can tell which container another process belongs to, as the fanotify
/// backend must (`/proc/<pid>/root` of a process with capabilities this one lacks needs
/// `CAP_SYS_PTRACE`; pids of the host need its PID namespace). BPF LSM reads it in the kernel.
fn process_roots() -> Result<String, String> {
    const CAP_SYS_PTRACE: u32 = 19;
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_PTRACE) == 0 {
        return Err("no CAP_SYS_PTRACE: with fanotify, a process whose root cannot be read (one holding capabilities this one lacks) is judged by the host's layer rule".to_owned());
    }
    std::fs::metadata("/proc/self/root")
        .map(|_| "CAP_SYS_PTRACE held: fanotify can read which container a process belongs to (BPF LSM reads it in the kernel)".to_owned())
        .map_err(|e| format!("/proc/self/root unreadable: {e}"))
}

/// Which enforcement backend this kernel gets, from the checks above, by the rule of
/// `enforce::choose()`: BPF LSM when its programs load here, fanotify otherwise.
fn backend_choice(checks: &[Check]) -> Check {
    let ok = |name: &str| checks.iter().any(|c| c.capability == name && c.ok);
    let (ok, detail) = if ok("bpf_lsm_active") && ok("bpf_lsm_programs_load") {
        (
            true,
            "bpf-lsm (covers exec and executable mappings, from every file system, by the process's container; survives the daemon)".to_owned(),
        )
    } else if ok("fanotify_exec_permission") {
        (
            true,
            "fanotify (BPF LSM unavailable; exec only, no executable mappings, only files on the snapshotter's file system: tmpfs and memfd executables are not seen, so outside_image = \"deny\" cannot cover them; needs the daemon running)"
                .to_owned(),
        )
    } else {
        (
            false,
            "none: neither BPF LSM programs nor fanotify permission events work".to_owned(),
        )
    };
    Check {
        capability: "enforcement_backend",
        ok,
        detail,
    }
}

fn overlay_report() -> Result<String, String> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").map_err(|e| e.to_string())?;
    if filesystems.lines().any(|line| line.ends_with("\toverlay")) {
        // Loadable modules have `initstate`; built-in ones with parameters appear without it.
        let module = Path::new("/sys/module/overlay/initstate").exists();
        Ok(format!(
            "registered ({})",
            if module { "module" } else { "built in" }
        ))
    } else {
        Err("overlay is not registered (modprobe overlay)".to_owned())
    }
}

/// Creates a content-class fanotify group and places an exec-permission mark on a scratch
/// directory's own inode (nobody execs a directory, so nothing can wait on this probe).
fn fanotify_probe() -> Result<String, String> {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    let group = Fanotify::init(
        InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC,
        EventFFlags::O_RDONLY,
    )
    .map_err(|e| format!("fanotify_init(FAN_CLASS_CONTENT): {e}"))?;
    let dir = std::env::temp_dir().join(format!("imagegate-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let marked = group.mark(
        MarkFlags::FAN_MARK_ADD,
        MaskFlags::FAN_OPEN_EXEC_PERM,
        None,
        Some(&dir),
    );
    let _ = std::fs::remove_dir(&dir);
    marked
        .map(|()| "FAN_CLASS_CONTENT group with FAN_OPEN_EXEC_PERM marks".to_owned())
        .map_err(|e| format!("fanotify_mark(FAN_OPEN_EXEC_PERM): {e}"))
}
