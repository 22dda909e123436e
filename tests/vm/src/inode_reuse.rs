//! Layer identity that a new directory cannot inherit (case 16). ext4 hands a removed
//! directory's inode number to the next directory it creates; a table entry left behind (pinned
//! maps while the daemon is down, or before it handles the removal) must not vouch for the new
//! one. The guest's snapshotter tmpfs never reuses numbers, so this case makes its own ext4 file
//! system on a loop device.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use imagegate::enforce::{LayerId, LayerState};

use crate::{exec_true, expect_eperm, expect_runs, fixture::BUSYBOX, loopfs::LoopFs, Context};

fn layer_with_busybox(snapshots: &Path, id: u32) -> Result<PathBuf> {
    let layer = snapshots.join(id.to_string()).join("fs");
    std::fs::create_dir_all(layer.join("bin"))?;
    std::fs::copy(BUSYBOX, layer.join("bin/tool")).context("copying busybox into the layer")?;
    Ok(layer)
}

/// Test case 16: a layer verified, then removed behind the table's back; the next directory
/// that gets its inode number is not verified (its generation differs), from the first exec.
pub fn case_inode_reuse(cx: &mut Context) -> Result<()> {
    // busybox mke2fs writes ext2; the kernel's ext4 driver mounts it (EXT4_USE_FOR_EXT2).
    let ext4 = LoopFs::create("ext4", 32 << 20, &["mke2fs", "-F"], "ext4")?;
    let scope = cx.backend().add_scope(&ext4.snapshots)?;
    let result = reuse(cx, &ext4);
    let removed = cx.backend().remove_scope(scope);
    drop(ext4);
    result?;
    removed?;
    Ok(())
}

fn reuse(cx: &mut Context, ext4: &LoopFs) -> Result<()> {
    let old_layer = layer_with_busybox(&ext4.snapshots, 1)?;
    let old = LayerId::of(&old_layer)?;
    ensure!(
        old.generation != 0,
        "ext4 gave layer {old} no generation: keys would be (dev, ino) only"
    );
    cx.backend().set_layer(old, LayerState::Verified)?;
    // The programs build the same key from the kernel's inode: the verified layer runs.
    // A host process reading the snapshot directory (as through a container's root) gets the
    // layer rule.
    expect_runs(
        "exec from the verified ext4 layer",
        exec_true(&old_layer.join("bin/tool")),
    )?;
    // Removed while nothing updates the table (the daemon down): its entry stays.
    std::fs::remove_dir_all(old_layer.parent().context("snapshot dir")?)?;

    let mut reused = None;
    for id in 2..40 {
        let dir = ext4.snapshots.join(id.to_string()).join("fs");
        std::fs::create_dir_all(&dir)?;
        let new = LayerId::of(&dir)?;
        if new.ino == old.ino {
            reused = Some((id, new));
            break;
        }
    }
    let Some((id, new)) = reused else {
        bail!(
            "ext4 did not reuse inode {} within 38 new snapshots",
            old.ino
        );
    };
    ensure!(
        new.generation != old.generation,
        "the reused inode {} kept generation {}",
        new.ino,
        new.generation
    );
    let new_layer = layer_with_busybox(&ext4.snapshots, id)?;
    let _ = cx.backend().drain_events();
    expect_eperm(
        "exec from a new layer that reuses a verified one's inode number",
        exec_true(&new_layer.join("bin/tool")),
    )?;
    let events: Vec<_> = cx
        .backend()
        .drain_events()
        .into_iter()
        .filter(|event| event.file.dev == new.dev)
        .collect();
    let event = crate::one_event(&events, "reused inode")?;
    ensure!(
        event.reason == "unverified_layer" && event.layer == Some(new),
        "unexpected event {event:?} (expected layer {new})"
    );
    cx.backend().remove_layer(old)?;
    Ok(())
}
