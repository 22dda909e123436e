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
    let mut blobs = image.blobs();
    let manifest_descriptor = imagegate_testkit::image::manifest_descriptor(image);
    let image_index;
    let (top, index_digest) = if index {
        image_index = serde_json::to_vec(&serde_json::json!({
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
        blobs.push(&image_index);
        (top, Some(index_digest))
    } else {
        (manifest_descriptor, None)
    };
    imagegate_testkit::image::write_oci_archive(path, name, &blobs, top).expect("write archive");
    index_digest
}
