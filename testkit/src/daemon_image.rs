//! imagegate's own container image, the one the DaemonSet runs, built without an image
//! builder: one layer holding the binary, the shared libraries `ldd` names for it (with the
//! ELF interpreter) at their host paths, and the default configuration and policy; entrypoint
//! `imagegate`, arguments `daemon --config /etc/imagegate/imagegate.toml`. `cargo xtask image`
//! writes it as an OCI archive; `daemon/tests/daemon_image.rs` runs it under containerd.

use std::path::Path;

use crate::{
    elf,
    image::{self, File, Image},
    io, Result,
};

/// The name the DaemonSet and the chart use by default.
pub const NAME: &str = "docker.io/library/imagegate:0.1.0";

/// The image of `binary`, with `config_dir`'s `imagegate.toml` and `policy.toml` (the
/// repository's `packaging/config`) under `/etc/imagegate`.
pub fn build(binary: &Path, config_dir: &Path) -> Result<Image> {
    let read = |path: &Path| std::fs::read(path).map_err(io(format!("reading {}", path.display())));
    let mut files = vec![File::new("usr/bin/imagegate", read(binary)?, 0o755)];
    for library in elf::shared_libraries(binary)? {
        let contents = read(Path::new(&library))?;
        files.push(File::new(library.trim_start_matches('/'), contents, 0o755));
    }
    for name in ["imagegate.toml", "policy.toml"] {
        files.push(File::new(
            &format!("etc/imagegate/{name}"),
            read(&config_dir.join(name))?,
            0o644,
        ));
    }
    let layer = image::layer(&files)?;
    Ok(image::image_with_args(
        vec![layer],
        &["/usr/bin/imagegate"],
        &["daemon", "--config", "/etc/imagegate/imagegate.toml"],
    ))
}

/// Writes `image` as an OCI archive named [`NAME`] at `path`.
pub fn write(path: &Path, image: &Image) -> Result<()> {
    image::write_oci_archive(
        path,
        NAME,
        &image.blobs(),
        image::manifest_descriptor(image),
    )
}
