//! Builds OCI images in memory (uncompressed tar layers) and writes them as OCI archives that
//! `ctr images import` takes. Digests are computed here, so tests know every chainID in advance.

use std::path::Path;

use sha2::{Digest as _, Sha256};

/// A file in a layer: path inside the image, contents, mode.
pub struct File {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl File {
    pub fn new(path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            contents: contents.into(),
            mode,
        }
    }
}

pub fn digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// An image's blobs.
pub struct Image {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub diff_ids: Vec<String>,
}

impl Image {
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// A tar of `files` (parent directories added as needed).
pub fn layer(files: &[File]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let mut parent = Path::new(&file.path).parent();
        let mut chain = Vec::new();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            chain.push(dir.to_owned());
            parent = dir.parent();
        }
        for dir in chain.into_iter().rev() {
            if dirs.insert(dir.clone()) {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_mtime(0);
                builder
                    .append_data(&mut header, &dir, std::io::empty())
                    .expect("tar dir");
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(file.mode);
        header.set_size(file.contents.len() as u64);
        header.set_mtime(0);
        builder
            .append_data(&mut header, &file.path, file.contents.as_slice())
            .expect("tar file");
    }
    builder.into_inner().expect("tar")
}

/// An image of `layers` (each already a tar) for linux/amd64.
pub fn image(layers: Vec<Vec<u8>>) -> Image {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest json");
    Image {
        layers,
        config,
        manifest,
        diff_ids,
    }
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
