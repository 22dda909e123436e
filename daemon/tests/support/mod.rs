//! Test support shared by the integration tests: a private containerd and an OCI image builder.
#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod btrfs;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod explain;
pub mod image;
pub mod inode_reuse;
pub mod loop_mount;
pub mod recording;
pub mod reload;
pub mod responder;
pub mod signed;
pub mod tuf_repo;

/// A policy under which only `registry.test/trusted/**` images are trusted (accepted without
/// signatures); everything else is rejected.
pub const TRUSTED_ONLY_POLICY: &str = r#"version = 1
[default]
require = "reject"
[[scope]]
match = "registry.test/trusted/**"
require = "accept"
"#;

/// Whether the test runs as root; privileged tests print why they skip otherwise.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A fresh directory under the workspace's `target/` for one test.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir.canonicalize().expect("canonical scratch dir")
}
