//! The signed-image test bed: a private containerd on its own tmpfs, Debian's docker-registry on
//! 127.0.0.1, a trusted and an untrusted ECDSA P-256 key, and a push-and-sign helper writing
//! cosign's legacy `.sig` format (imagegate-testkit's signer, independent of the verifier).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use imagegate_testkit::{
    image::{self, File, Image},
    registry::{self, Client, LocalRegistry},
    sign::{self, Key},
};

use super::containerd::PrivateContainerd;

pub struct SignedBed {
    /// Dropped before `registry` and `dir`'s removal.
    pub containerd: PrivateContainerd,
    pub registry: LocalRegistry,
    pub client: Client,
    /// `127.0.0.1:PORT` of the registry.
    pub addr: String,
    /// The key the policy trusts.
    pub trusted: Key,
    /// A valid key the policy does not trust.
    pub other: Key,
    pub dir: PathBuf,
    busybox: Vec<u8>,
}

/// Whether Debian's docker-registry is installed; a test without it says it skips, and fails
/// where `IMAGEGATE_REQUIRE_REGISTRY` is set (`cargo xtask test`).
pub fn registry_installed() -> bool {
    if Path::new(registry::REGISTRY_BIN).exists() {
        return true;
    }
    assert!(
        std::env::var_os("IMAGEGATE_REQUIRE_REGISTRY").is_none(),
        "IMAGEGATE_REQUIRE_REGISTRY is set but {} is missing",
        registry::REGISTRY_BIN
    );
    eprintln!("SKIPPED: {} not installed", registry::REGISTRY_BIN);
    false
}

impl SignedBed {
    /// Starts containerd and the registry under a fresh scratch dir; `None` (with the reason
    /// printed) when this machine cannot run it: not root, or no docker-registry unless
    /// `IMAGEGATE_REQUIRE_REGISTRY` demands it.
    pub fn start(name: &str) -> Option<Self> {
        Self::start_with(name, |dir, _| PrivateContainerd::start_on_tmpfs(dir))
    }

    /// [`Self::start`] with containerd's CRI plugin enabled ([`super::cri::config`]): its
    /// sandbox image is `ADDR/SANDBOX_REPO:v1` in the bed's registry (pulled over plain HTTP),
    /// which the test pushes before its first pod.
    pub fn start_cri(name: &str, sandbox_repo: &str) -> Option<Self> {
        Self::start_cri_with(name, sandbox_repo, "")
    }

    /// [`Self::start_cri`] with `image_settings`, more keys of the CRI plugin's image settings
    /// ([`super::cri::config`]).
    pub fn start_cri_with(name: &str, sandbox_repo: &str, image_settings: &str) -> Option<Self> {
        Self::start_with(name, |dir, addr| {
            let hosts = dir.join("certs.d");
            super::cri::plain_http_host(&hosts, addr);
            let cni = dir.join("cni");
            std::fs::create_dir_all(cni.join("conf")).expect("cni conf dir");
            std::fs::create_dir_all(cni.join("bin")).expect("cni bin dir");
            PrivateContainerd::start_cri_on_tmpfs(
                dir,
                &super::cri::config(
                    &format!("{addr}/{sandbox_repo}:v1"),
                    &hosts,
                    &cni,
                    image_settings,
                ),
            )
        })
    }

    /// Starts the registry, then containerd by `containerd(dir, registry address)`.
    fn start_with(
        name: &str,
        containerd: impl FnOnce(&Path, &str) -> PrivateContainerd,
    ) -> Option<Self> {
        if !super::is_root() {
            eprintln!("SKIPPED: containerd, runc and fanotify need root");
            return None;
        }
        if !registry_installed() {
            return None;
        }
        let dir = super::scratch_dir(name);
        let registry = LocalRegistry::start(&dir.join("registry")).expect("start docker-registry");
        let addr = registry.addr.clone();
        let containerd = containerd(&dir, &addr);
        let client = Client::new(&addr).expect("registry client");
        Some(Self {
            containerd,
            registry,
            client,
            addr,
            trusted: Key::generate().expect("key"),
            other: Key::generate().expect("key"),
            dir,
            busybox: std::fs::read("/bin/busybox")
                .expect("busybox (apt-get install busybox-static)"),
        })
    }

    /// `ADDR/REPO:v1`.
    pub fn name(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.addr)
    }

    /// A layer holding busybox at `bin/busybox`, plus `etc/MARKER` when given (a distinct layer).
    pub fn busybox_layer(&self, marker: Option<&str>) -> Vec<u8> {
        let mut files = vec![File::new("bin/busybox", self.busybox.clone(), 0o755)];
        if let Some(marker) = marker {
            files.push(File::new(&format!("etc/{marker}"), marker, 0o644));
        }
        image::layer(&files).expect("layer")
    }

    /// A layer holding busybox at `path`.
    pub fn busybox_at(&self, path: &str) -> Vec<u8> {
        image::layer(&[File::new(path, self.busybox.clone(), 0o755)]).expect("layer")
    }

    /// An image of `base` plus a small layer of its own (`etc/MARKER`), running busybox.
    pub fn image_on(&self, base: &[u8], marker: &str) -> Image {
        let own =
            image::layer(&[File::new(&format!("etc/{marker}"), marker, 0o644)]).expect("layer");
        image::image(vec![base.to_vec(), own], &["/bin/busybox", "echo", "hello"])
    }

    /// Pushes `image` as `REPO:v1` and, with a key, signs its manifest digest; returns the digest.
    pub fn push(&self, repo: &str, image: &Image, key: Option<&Key>) -> String {
        let digest = self
            .client
            .push_image(repo, "v1", image)
            .expect("push image");
        if let Some(key) = key {
            sign::sign_legacy(&self.client, key, &self.addr, repo, &digest).expect("sign");
        }
        digest
    }

    /// Writes `dir/policy.toml`: images under `ADDR/PREFIX/**` need a signature by the trusted
    /// key; everything else is rejected.
    pub fn write_policy(&self, prefix: &str) {
        let key = self.dir.join("trusted.pub");
        std::fs::write(&key, self.trusted.public_pem().expect("pem")).expect("key file");
        std::fs::write(
            self.dir.join("policy.toml"),
            format!(
                "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/{prefix}/**\"\n\
                 require = \"signatures\"\n[[scope.keys]]\nname = \"trusted\"\npath = \"{key}\"\n",
                addr = self.addr,
                key = key.display(),
            ),
        )
        .expect("policy");
    }

    /// Pulls every name, `at_once` `ctr images pull` processes at a time, asserting success.
    pub fn pull_all(&self, names: &[String], at_once: usize) {
        for chunk in names.chunks(at_once.max(1)) {
            let pulls: Vec<_> = chunk
                .iter()
                .map(|name| {
                    let child = super::containerd::ctr_command()
                        .arg("--address")
                        .arg(&self.containerd.socket)
                        .args([
                            "--namespace",
                            "default",
                            "images",
                            "pull",
                            "--plain-http",
                            name,
                        ])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("run ctr");
                    (name, child)
                })
                .collect();
            for (name, pull) in pulls {
                let out = pull.wait_with_output().expect("wait for ctr");
                assert!(out.status.success(), "pull {name}: {out:?}");
            }
        }
    }

    /// Puts a verifier into the private containerd 2.x's image verifier `bin_dir`
    /// (`image-verifiers/`, [`super::containerd::config_toml`]): a script named `imagegate`, the
    /// packaged verifier's shape (packaging/containerd/imagegate), running `imagegate
    /// containerd-verifier --config CONFIG` with containerd's arguments. Returns its path.
    pub fn install_verifier(&self, config: &Path) -> PathBuf {
        let bin_dir = self.dir.join("image-verifiers");
        std::fs::create_dir_all(&bin_dir).expect("verifier bin_dir");
        let script = bin_dir.join("imagegate");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec {} containerd-verifier --config {} \"$@\"\n",
                super::daemon::imagegate_bin().display(),
                config.display()
            ),
        )
        .expect("write the verifier");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the verifier");
        script
    }

    /// `imagegate doctor`'s `pull_verifier` line for this bed's containerd (the release under
    /// test, its configuration `dir/config.toml`): whether its pulls reach the verifier.
    pub fn doctor_pull_verifier(&self) -> String {
        let out = std::process::Command::new(super::daemon::imagegate_bin())
            .args(["doctor", "--containerd"])
            .arg(
                super::containerd::bin_dir()
                    .map_or_else(|| PathBuf::from("containerd"), |dir| dir.join("containerd")),
            )
            .arg("--containerd-config")
            .arg(self.dir.join("config.toml"))
            .output()
            .expect("run imagegate doctor");
        let report = String::from_utf8_lossy(&out.stdout);
        report
            .lines()
            .find(|line| line.starts_with("pull_verifier"))
            .unwrap_or_else(|| panic!("no pull_verifier line: {report}"))
            .to_owned()
    }

    /// `ctr images pull --plain-http NAME`, asserting success.
    pub fn pull(&self, name: &str) {
        let out = self
            .containerd
            .ctr(&["images", "pull", "--plain-http", name]);
        assert!(out.status.success(), "pull {name}: {out:?}");
    }
}

/// Asserts that `error` (`ctr`'s stderr, or a CRI call's gRPC status message) is containerd 2.x's
/// refusal of the pull of `name` (manifest or index `digest`) at its verifier hook, with
/// imagegate's reason.
pub fn assert_pull_refused(error: &str, name: &str, digest: &str) {
    assert!(
        error.contains(&format!(
            "image verifier bindir blocked pull of {name} with digest {digest} for reason: \
             verifier imagegate rejected image (exit code 1): imagegate refused the pull: "
        )),
        "{name} failed otherwise: {error}"
    );
}
