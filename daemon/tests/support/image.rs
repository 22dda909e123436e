//! OCI images built in memory (testkit's builder), written as OCI archives that
//! `ctr images import` takes. Digests are known up front, so tests know every chainID.

use std::path::Path;

pub use imagegate_testkit::image::{digest, File, Image};

/// A tar of `files` (testkit's builder; panics in tests rather than returning errors).
pub fn layer(files: &[File]) -> Vec<u8> {
    imagegate_testkit::image::layer(files).expect("build a layer tar")
}

/// A linux/amd64 image of `layers`; the tests name what they run, so the entrypoint is a stub.
pub fn image(layers: Vec<Vec<u8>>) -> Image {
    imagegate_testkit::image::image(layers, &["/bin/true"])
}

/// Writes an OCI archive holding `image` under `name`; with `index`, the archive's index points
/// to an image index that lists the manifest for linux/amd64 (and a bogus arm64 entry).
pub fn write_archive(path: &Path, name: &str, image: &Image, index: bool) -> Option<String> {
    let mut blobs: Vec<Vec<u8>> = image.layers.clone();
    blobs.push(image.config.clone());
    blobs.push(image.manifest.clone());
    let manifest_descriptor = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.manifest_digest(),
        "size": image.manifest.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
    });
    let (top, index_digest) = if index {
        let image_index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                 "size": 10, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                manifest_descriptor,
            ],
        }))
        .expect("index json");
        let index_digest = digest(&image_index);
        let top = serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": image_index.len(),
        });
        blobs.push(image_index);
        (top, Some(index_digest))
    } else {
        (manifest_descriptor, None)
    };
    let mut top = top;
    top["annotations"] = serde_json::json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest"),
    });
    let outer_index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [top]}))
            .expect("json");
    let mut archive = tar::Builder::new(std::fs::File::create(path).expect("archive file"));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        archive
            .append_data(&mut header, name, bytes)
            .expect("archive entry");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &outer_index);
    for blob in &blobs {
        add(&format!("blobs/sha256/{}", &digest(blob)[7..]), blob);
    }
    archive.finish().expect("finish archive");
    index_digest
}
