//! Scopes on btrfs (case 17). btrfs gives each subvolume a device number of its own
//! (`anon_dev`), which `stat` reports as `st_dev`, while the super block's `s_dev` is another
//! one: programs keyed by `s_dev` would find no scope there and judge nothing. The case makes a
//! btrfs file system on a loop device, checks that premise, and runs the self-test, the layer
//! rule and a container root on it.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _, Result};
use imagegate::enforce::{layer::DeviceNumbering, selftest, ContainerTrust, LayerId, LayerState};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{chroot_exec, expect_eperm, expect_runs, fixture::BUSYBOX, loopfs::LoopFs, Context};

/// `snapshots/<id>/fs` with busybox as `bin/true`.
fn layer(btrfs: &LoopFs, id: u32) -> Result<PathBuf> {
    let layer = btrfs.snapshots.join(id.to_string()).join("fs");
    std::fs::create_dir_all(layer.join("bin"))?;
    std::fs::copy(BUSYBOX, layer.join("bin/true")).context("copying busybox")?;
    Ok(layer)
}

/// The super block's device of the mount at `target`, from `/proc/self/mountinfo` (its third
/// field is `s_dev` as `major:minor`), in the kernel's encoding.
fn super_block_dev(target: &Path) -> Result<u64> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let line = mountinfo
        .lines()
        .find(|line| line.split_whitespace().nth(4) == target.to_str())
        .with_context(|| format!("{} is not in mountinfo", target.display()))?;
    let field = line.split_whitespace().nth(2).context("mountinfo field")?;
    let (major, minor) = field.split_once(':').context("major:minor")?;
    Ok(imagegate_common::kernel_dev(libc::makedev(
        major.parse()?,
        minor.parse()?,
    )))
}

/// Test case 17: a scope on btrfs is judged by the device `stat` reports (the subvolume's), the
/// self-test picks a scratch directory there and passes, the layer rule and a container root on
/// it work.
pub fn case_btrfs(cx: &mut Context) -> Result<()> {
    // Above mkfs.btrfs's minimum for its default profiles; sparse on the guest's tmpfs.
    let btrfs = LoopFs::create("btrfs", 256 << 20, &["mkfs.btrfs", "-q", "-f"], "btrfs")?;
    // The premise: without reading the subvolume's device the programs would key wrongly.
    let st_dev = LayerId::of(&btrfs.snapshots)?.dev;
    let s_dev = super_block_dev(&btrfs.root)?;
    ensure!(
        st_dev != s_dev,
        "btrfs reported its super block's device {s_dev} to stat: the case proves nothing"
    );
    ensure!(DeviceNumbering::of(&btrfs.root)? == DeviceNumbering::BtrfsSubvolume);

    // The daemon's choice: the scratch directory on the scope's own file system.
    let on_btrfs = btrfs.root.join("selftest");
    let scratch = selftest::scratch_for(
        &btrfs.snapshots,
        &[
            PathBuf::from("/run/imagegate-elsewhere/selftest"),
            on_btrfs.clone(),
        ],
    )?;
    ensure!(
        scratch == on_btrfs,
        "self-test scratch {scratch:?} is not on btrfs"
    );
    let report = selftest::run(cx.backend(), &scratch)?;
    ensure!(
        report.deny_event.verdict == "denied"
            && report
                .deny_event
                .layer
                .is_some_and(|layer| layer.dev == st_dev),
        "self-test on btrfs: {:?}",
        report.deny_event
    );

    let scope = cx.backend().add_scope(&btrfs.snapshots)?;
    let result = judged(cx, &btrfs, st_dev);
    let removed = cx.backend().remove_scope(scope);
    drop(btrfs);
    result?;
    removed?;
    Ok(())
}

fn judged(cx: &mut Context, btrfs: &LoopFs, st_dev: u64) -> Result<()> {
    let verified = layer(btrfs, 1)?;
    let unverified = layer(btrfs, 2)?;
    let upper = btrfs.snapshots.join("3/fs");
    let work = btrfs.snapshots.join("3/work");
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    let verified_id = LayerId::of(&verified)?;
    let container = LayerId::of(&upper)?;
    cx.backend().set_layer(verified_id, LayerState::Verified)?;
    cx.clear_events();

    // The layer rule, for a host process.
    expect_runs(
        "verified btrfs layer",
        crate::exec_true(&verified.join("bin/true")),
    )?;
    expect_eperm(
        "unverified btrfs layer",
        crate::exec_true(&unverified.join("bin/true")),
    )?;
    let unverified_id = LayerId::of(&unverified)?;
    let events = cx.backend().drain_events();
    ensure!(
        events
            .iter()
            .any(|event| event.reason == "unverified_layer" && event.layer == Some(unverified_id)),
        "no unverified_layer event for the btrfs layer: {events:?}"
    );

    // A container root: its writable layer and its lower on btrfs.
    let merged = btrfs.root.join("merged");
    std::fs::create_dir_all(&merged)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        verified.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .context("mounting the container root")?;
    std::fs::copy(BUSYBOX, merged.join("bin/drifted")).context("writing drift")?;
    let result = (|| {
        expect_eperm(
            "verified layer in an untrusted container on btrfs",
            chroot_exec(&merged, "/bin/true"),
        )?;
        let events = cx.backend().drain_events();
        ensure!(
            events
                .iter()
                .any(|e| e.reason == "untrusted_image" && e.container_root == Some(container)),
            "no untrusted_image event naming container {container}: {events:?}"
        );
        cx.backend()
            .set_container(container, ContainerTrust::Trusted.into())?;
        expect_runs(
            "own layer of a trusted container on btrfs",
            chroot_exec(&merged, "/bin/true"),
        )?;
        expect_eperm(
            "drift in a trusted container on btrfs",
            chroot_exec(&merged, "/bin/drifted"),
        )?;
        let events = cx.backend().drain_events();
        ensure!(
            events
                .iter()
                .any(|e| e.reason == "drift" && e.file.dev == st_dev),
            "no drift event on the btrfs device: {events:?}"
        );
        Ok(())
    })();
    let _ = umount2(&merged, MntFlags::MNT_DETACH);
    cx.backend().remove_container(container)?;
    cx.backend().remove_layer(verified_id)?;
    result
}
