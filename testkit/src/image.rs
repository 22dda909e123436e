//! Runnable OCI images built in memory: uncompressed tar layers, a linux/amd64 config with an
//! entrypoint, and the manifest, with every digest known before anything is pushed.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::{io, Result};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

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

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// An image's blobs.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    /// The layers' digests as the config lists them (uncompressed layers: the same as blobs).
    pub diff_ids: Vec<String>,
}

impl Image {
    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Every blob: the layers, the config and the manifest.
    pub fn blobs(&self) -> Vec<&[u8]> {
        let mut blobs: Vec<&[u8]> = self.layers.iter().map(Vec::as_slice).collect();
        blobs.push(&self.config);
        blobs.push(&self.manifest);
        blobs
    }
}

/// A tar of `files`, parent directories added, timestamps zero (so equal inputs give equal
/// layers, which is what lets two images share a layer).
pub fn layer(files: &[File]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for file in files {
        let mut chain = Vec::new();
        let mut parent = Path::new(&file.path).parent();
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
                    .map_err(io("tar directory"))?;
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(file.mode);
        header.set_size(file.contents.len() as u64);
        header.set_mtime(0);
        builder
            .append_data(&mut header, &file.path, file.contents.as_slice())
            .map_err(io("tar file"))?;
    }
    builder.into_inner().map_err(io("tar"))
}

/// A linux/amd64 image of `layers` (each a tar) whose entrypoint is `entrypoint`.
pub fn image(layers: Vec<Vec<u8>>, entrypoint: &[&str]) -> Image {
    image_with_args(layers, entrypoint, &[])
}

/// [`image`] with default arguments (`Cmd`) after the entrypoint.
pub fn image_with_args(layers: Vec<Vec<u8>>, entrypoint: &[&str], args: &[&str]) -> Image {
    let mut container = serde_json::json!({"Entrypoint": entrypoint});
    if !args.is_empty() {
        container["Cmd"] = serde_json::json!(args);
    }
    image_with_config(layers, container)
}

/// [`image`] whose config's `config` object (the runtime settings: `Entrypoint`, `Cmd`,
/// `Volumes`, ...) is `container`.
pub fn image_with_config(layers: Vec<Vec<u8>>, container: serde_json::Value) -> Image {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": LAYER_MEDIA_TYPE, "digest": digest(l), "size": l.len()
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    Image {
        layers,
        config,
        manifest,
        diff_ids,
    }
}

/// The descriptor of `image`'s manifest, for linux/amd64.
pub fn manifest_descriptor(image: &Image) -> serde_json::Value {
    serde_json::json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": image.manifest_digest(),
        "size": image.manifest.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
    })
}

/// Writes an OCI image layout as a tar archive (what `ctr images import`, `podman load` and
/// `skopeo copy oci-archive:` take): `blobs`, and an index whose one entry is `top`, named
/// `name` (`registry/repository:tag`) in the annotations containerd and the OCI spec read.
pub fn write_oci_archive(
    path: &Path,
    name: &str,
    blobs: &[&[u8]],
    mut top: serde_json::Value,
) -> Result<()> {
    top["annotations"] = serde_json::json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest"),
    });
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]}).to_string();
    let file = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    let mut archive = tar::Builder::new(file);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        archive
            .append_data(&mut header, name, bytes)
            .map_err(io(format!("archiving {name}")))
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", index.as_bytes())?;
    for blob in blobs {
        add(&format!("blobs/sha256/{}", &digest(blob)[7..]), blob)?;
    }
    archive.finish().map_err(io("finishing the archive"))
}
