//! The catalog against a real (private) containerd: images imported with `ctr`, unpacked by
//! containerd's overlayfs snapshotter, found again with their chainIDs and layer directories.

mod support;

use std::path::Path;

use imagegate::catalog::{self, Containerd};
use support::{
    containerd::PrivateContainerd,
    image::{self, File},
};

fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("busybox (apt-get install busybox-static)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_images_layers_and_snapshot_directories() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("catalog");
    let containerd = PrivateContainerd::start(&dir);

    let base = image::layer(&[File::new("bin/busybox", busybox(), 0o755)]);
    let top = image::layer(&[File::new("etc/motd", "hello\n", 0o644)]);
    let app = image::image(vec![base.clone(), top]);
    let app_archive = dir.join("app.tar");
    image::write_archive(&app_archive, "registry.test/app:1", &app, false);
    containerd.import("default", &app_archive);

    // A second image sharing the base layer, behind an index, in another namespace.
    let other = image::image(vec![
        base,
        image::layer(&[File::new("etc/other", "x", 0o644)]),
    ]);
    let other_archive = dir.join("other.tar");
    let index_digest = image::write_archive(&other_archive, "registry.test/other:1", &other, true);
    containerd.import("k8s.io", &other_archive);

    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let mut namespaces = client.namespaces().await.expect("namespaces");
    namespaces.sort();
    assert_eq!(namespaces, ["default", "k8s.io"]);

    let images: Vec<_> = catalog::reconcile(&client, &namespaces)
        .await
        .expect("reconcile")
        .into_iter()
        .map(|(_, result)| result.expect("every image catalogued"))
        .collect();
    let find = |name: &str| {
        images
            .iter()
            .find(|image| image.resolved.record.name == name)
            .unwrap_or_else(|| panic!("{name} not catalogued"))
    };
    let app_found = find("registry.test/app:1");
    assert_eq!(app_found.resolved.manifest_digest, app.manifest_digest());
    assert_eq!(app_found.resolved.index_digest, None);
    assert_eq!(
        app_found.resolved.chain_ids,
        imagegate::oci::chain_ids(&app.diff_ids)
    );
    assert_eq!(app_found.layers.len(), 2);
    let snapshots = containerd.snapshots_dir();
    for layer in &app_found.layers {
        assert_eq!(
            layer.dir.parent().and_then(Path::parent),
            Some(snapshots.as_path()),
            "{layer:?}"
        );
        assert_eq!(
            layer.id,
            imagegate::enforce::LayerId::of(&layer.dir).expect("stat")
        );
    }
    assert!(
        app_found.layers[0].dir.join("bin/busybox").exists(),
        "bottom layer holds busybox"
    );
    assert!(
        app_found.layers[1].dir.join("etc/motd").exists(),
        "top layer holds motd"
    );

    let other_found = find("registry.test/other:1");
    assert_eq!(other_found.resolved.record.namespace, "k8s.io");
    assert_eq!(
        other_found.resolved.index_digest, index_digest,
        "the index is recorded"
    );
    assert_eq!(
        other_found.resolved.manifest_digest,
        other.manifest_digest(),
        "the amd64 manifest is chosen"
    );
    assert_eq!(other_found.layers.len(), 2);
    // The shared base layer is one snapshot directory (containerd unpacks it once per namespace
    // or shares it; either way the chainID is the same).
    assert_eq!(
        other_found.resolved.chain_ids[0],
        app_found.resolved.chain_ids[0]
    );

    // No view snapshots are left behind.
    let leftovers = containerd.ctr(&["snapshots", "ls"]);
    assert!(
        !String::from_utf8_lossy(&leftovers.stdout).contains("imagegate-view"),
        "view snapshots left: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_is_not_unpacked_has_no_layers_yet() {
    if !support::is_root() {
        eprintln!("skipping: containerd needs root");
        return;
    }
    let dir = support::scratch_dir("catalog-nounpack");
    let containerd = PrivateContainerd::start(&dir);
    let img = image::image(vec![image::layer(&[File::new(
        "bin/busybox",
        busybox(),
        0o755,
    )])]);
    let archive = dir.join("img.tar");
    image::write_archive(&archive, "registry.test/packed:1", &img, false);
    let out = containerd.ctr(&[
        "images",
        "import",
        "--no-unpack",
        archive.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let client = Containerd::connect(&containerd.socket)
        .await
        .expect("connect");
    let record = client
        .image("default", "registry.test/packed:1")
        .await
        .expect("get")
        .expect("exists");
    let resolved = client.resolve(&record).await.expect("resolve");
    let located = catalog::locate(&client, resolved).await.expect("locate");
    assert!(
        located.layers.is_empty(),
        "no snapshots exist before unpack: {:?}",
        located.layers
    );
    assert!(client
        .image("default", "registry.test/missing:1")
        .await
        .expect("get")
        .is_none());
}
