//! The guest's initramfs: busybox, the spec's files with their shared libraries, decompressed
//! modules and a generated `/init`, staged in a directory and archived with `cpio -H newc`.

use std::{
    fs,
    io::Write as _,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{
    kernel::{module_load_order, Kernel, ModuleFile},
    GuestSpec,
};
use crate::setup::output;

/// The host's static busybox: the guest's whole userland.
const BUSYBOX: &str = "/bin/busybox";
/// Where `/init` finds the spec's command.
const COMMAND_PATH: &str = "/etc/imagegate/command";
/// Printed by `/init` when it starts its set-up, with the guest's uptime in seconds.
pub const START_MARKER: &str = "IMAGEGATE-GUEST-START";
/// Printed by `/init` after the command, with its exit status.
pub const EXIT_MARKER: &str = "IMAGEGATE-GUEST-EXIT";

/// Stages the guest's root under `work/root` and archives it to `work/initramfs.cpio`.
pub fn build(kernel: &Kernel, spec: &GuestSpec, work: &Path) -> Result<PathBuf> {
    let root = work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for dir in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "root",
        "etc/imagegate",
        "newroot",
    ] {
        create_dir(&root.join(dir))?;
    }
    install_busybox(&root)?;
    for (host, guest) in &spec.files {
        install(&root, host, guest)?;
    }
    let modules = module_load_order(kernel, &spec.modules)?;
    for module in &modules {
        let dest = root.join(guest_relative(&modules_guest_path(kernel, module))?);
        create_parent(&dest)?;
        module.decompress_to(kernel, &dest)?;
    }
    write(
        &root.join(guest_relative(COMMAND_PATH)?),
        &format!("{}\n", spec.command),
        0o644,
    )?;
    write(
        &root.join("init"),
        &init_script(kernel, &modules, spec.pid1),
        0o755,
    )?;
    let archive = work.join("initramfs.cpio");
    archive_root(&root, &archive)?;
    Ok(archive)
}

/// Copies busybox to `/bin/busybox` and links every applet (`busybox --list-full`) to it.
fn install_busybox(root: &Path) -> Result<()> {
    install(root, Path::new(BUSYBOX), BUSYBOX)?;
    let applets = output(Command::new(BUSYBOX).arg("--list-full"))?;
    // Applets are listed relative to the root: "usr/bin/env", "sbin/switch_root".
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        let link = root.join(guest_relative(&format!("/{applet}"))?);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        create_parent(&link)?;
        symlink(BUSYBOX, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// Copies a host file (or directory tree) to `guest` under `root`, with the shared libraries of
/// dynamically linked ELF files at their host paths.
fn install(root: &Path, host: &Path, guest: &str) -> Result<()> {
    let dest = root.join(guest_relative(guest)?);
    let meta = fs::metadata(host).with_context(|| format!("guest file {}", host.display()))?;
    if meta.is_dir() {
        create_dir(&dest)?;
        for entry in fs::read_dir(host).with_context(|| format!("reading {}", host.display()))? {
            let entry = entry.with_context(|| format!("reading {}", host.display()))?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("non-UTF-8 name in {}", host.display()))?;
            install(
                root,
                &entry.path(),
                &format!("{}/{name}", guest.trim_end_matches('/')),
            )?;
        }
        return Ok(());
    }
    create_parent(&dest)?;
    if dest.symlink_metadata().is_ok() {
        // Spec files win over busybox applet links and over earlier copies.
        fs::remove_file(&dest).with_context(|| format!("replacing {}", dest.display()))?;
    }
    fs::copy(host, &dest)
        .with_context(|| format!("copying {} to {}", host.display(), dest.display()))?;
    for library in imagegate_testkit::elf::shared_libraries(host)? {
        let lib_dest = root.join(guest_relative(&library)?);
        if lib_dest.symlink_metadata().is_err() {
            create_parent(&lib_dest)?;
            fs::copy(&library, &lib_dest)
                .with_context(|| format!("copying {library} to {}", lib_dest.display()))?;
        }
    }
    Ok(())
}

/// Where `module` goes in the guest: its path under `/lib/modules/<release>`, uncompressed.
fn modules_guest_path(kernel: &Kernel, module: &ModuleFile) -> String {
    format!("/lib/modules/{}/{}", kernel.release, module.uncompressed())
}

/// The guest's `/init`. The initramfs rootfs cannot be `pivot_root`ed out of (runc needs that)
/// and lacks the xattrs overlayfs upper dirs need, so the first stage copies the root into a
/// tmpfs and `switch_root`s there; the second stage, in the tmpfs, does the real set-up.
fn init_script(kernel: &Kernel, modules: &[ModuleFile], pid1: bool) -> String {
    let insmods: String = modules
        .iter()
        .map(|module| {
            let path = modules_guest_path(kernel, module);
            format!("insmod {path} || echo \"init: insmod {path} failed\"\n")
        })
        .collect();
    // As PID 1 the command has no /init after it: it reports and powers off itself.
    let run = if pid1 {
        format!("exec sh {COMMAND_PATH} </dev/null")
    } else {
        format!(
            "sh {COMMAND_PATH} </dev/null\nstatus=$?\nsync\necho \"{EXIT_MARKER} $status\"\npoweroff -f"
        )
    };
    format!(
        r#"#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
if [ ! -e /.imagegate-tmpfs ]; then
    # Stage 1, in the initramfs rootfs: copy everything into a tmpfs and switch_root into it.
    mount -t tmpfs -o mode=0755 tmpfs /newroot || poweroff -f
    for entry in /*; do
        case "$entry" in
            /newroot|/proc|/sys|/dev) mkdir -p "/newroot$entry" ;;
            *) cp -a "$entry" /newroot/ ;;
        esac
    done
    : > /newroot/.imagegate-tmpfs
    exec switch_root /newroot /init
    echo "init: switch_root failed"
    poweroff -f
fi
# Stage 2, in the tmpfs root.
rmdir /newroot 2>/dev/null
mount -t proc proc /proc
# The firmware leaves its last line unterminated; start on a fresh one.
echo
echo "{START_MARKER} $(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
{insmods}cd /
{run}
"#
    )
}

/// Archives `root` as a `cpio -H newc` initramfs, parents before children, owned by root.
fn archive_root(root: &Path, archive: &Path) -> Result<()> {
    let mut names = Vec::new();
    list_tree(root, Path::new("."), &mut names)?;
    let file =
        fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "--null", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("starting cpio")?;
    let mut stdin = cpio.stdin.take().context("cpio has no stdin")?;
    let written = names.iter().try_for_each(|name| {
        stdin.write_all(name.as_os_str().as_bytes())?;
        stdin.write_all(b"\0")
    });
    drop(stdin);
    let status = cpio.wait().context("waiting for cpio")?;
    written.with_context(|| format!("feeding cpio the file list of {}", root.display()))?;
    if !status.success() {
        bail!("cpio -o -H newc of {} failed: {status}", root.display());
    }
    Ok(())
}

/// Appends `relative` and, for directories, everything below it (sorted, not following links).
fn list_tree(root: &Path, relative: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    let path = root.join(relative);
    let meta = path
        .symlink_metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    names.push(relative.to_path_buf());
    if meta.is_dir() {
        let mut entries = fs::read_dir(&path)
            .and_then(|entries| {
                entries
                    .map(|entry| entry.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .with_context(|| format!("reading {}", path.display()))?;
        entries.sort();
        for name in entries {
            list_tree(root, &relative.join(name), names)?;
        }
    }
    Ok(())
}

/// An absolute guest path as a relative one, refusing `..` so nothing lands outside the root.
fn guest_relative(guest: &str) -> Result<PathBuf> {
    let path = Path::new(guest);
    if !path.is_absolute() {
        bail!("guest path {guest:?} is not absolute");
    }
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                bail!("guest path {guest:?} leaves the root")
            }
        }
    }
    if relative.as_os_str().is_empty() {
        bail!("guest path {guest:?} names the root itself");
    }
    Ok(relative)
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    path.parent().map_or(Ok(()), create_dir)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    create_parent(path)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_stay_inside_the_root() {
        assert_eq!(
            guest_relative("/usr/bin/x").ok(),
            Some(PathBuf::from("usr/bin/x"))
        );
        assert!(guest_relative("usr/bin/x").is_err());
        assert!(guest_relative("/usr/../../x").is_err());
        assert!(guest_relative("/").is_err());
    }
}
