//! Debian's `docker-registry` (distribution 2.8) on 127.0.0.1, and a push client for it. The
//! process is ours: it is stopped by its pid when [`LocalRegistry`] is dropped.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{image::Image, io, Error, Result};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running `docker-registry serve` with its storage under a directory of the caller's.
pub struct LocalRegistry {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl LocalRegistry {
    /// Starts the registry on a free 127.0.0.1 port, storing under `dir/data`, logging to
    /// `dir/registry.log`, and waits until `/v2/` answers.
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .map_err(io("writing the registry config"))?;
        let log = std::fs::File::create(dir.join("registry.log"))
            .map_err(io("creating the registry log"))?;
        // Its own process group: a terminal's Ctrl-C goes to the caller, which stops it by pid.
        let child = Command::new(REGISTRY_BIN)
            .process_group(0)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting {REGISTRY_BIN}")))?;
        let registry = Self {
            child: Some(child),
            addr,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(&registry.addr).is_ok()
                && Client::new(&registry.addr)?.ping()
            {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::RegistryStart(registry.addr.clone()))
    }

    /// The registry's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the registry: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(5));
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM to `child`'s pid, then SIGKILL if it is still there after `grace`; always reaped.
pub fn stop_child(mut child: Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > grace {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking push client for a plain-HTTP registry (its own single-thread runtime, so callers
/// need no async; do not call it from inside a tokio runtime).
pub struct Client {
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(addr: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting a tokio runtime"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| Error::Http {
                what: "client".into(),
                source,
            })?;
        Ok(Self {
            base: format!("http://{addr}"),
            http,
            runtime,
        })
    }

    fn ping(&self) -> bool {
        self.runtime.block_on(async {
            self.http
                .get(format!("{}/v2/", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    }

    /// Uploads `bytes` as a blob of `repo` (monolithic upload: POST, then PUT with the digest);
    /// returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = crate::image::digest(bytes);
        self.runtime.block_on(async {
            let what = format!("blob {digest} to {repo}");
            let head = self
                .http
                .head(format!("{}/v2/{repo}/blobs/{digest}", self.base))
                .send()
                .await
                .map_err(|source| Error::Http {
                    what: what.clone(),
                    source,
                })?;
            if head.status().is_success() {
                return Ok(());
            }
            let started = self
                .http
                .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
                .send()
                .await
                .map_err(|source| Error::Http {
                    what: what.clone(),
                    source,
                })?;
            let started = check(started, &what).await?;
            let location = started
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| Error::Status {
                    what: what.clone(),
                    status: started.status().as_u16(),
                    body: "no Location header".into(),
                })?;
            let location = if location.starts_with("http") {
                location.to_owned()
            } else {
                format!("{}{location}", self.base)
            };
            let separator = if location.contains('?') { '&' } else { '?' };
            let put = self
                .http
                .put(format!("{location}{separator}digest={digest}"))
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec())
                .send()
                .await
                .map_err(|source| Error::Http {
                    what: what.clone(),
                    source,
                })?;
            check(put, &what).await.map(drop)
        })?;
        Ok(digest)
    }

    /// Puts `manifest` under `repo:reference` (a tag or its digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> Result<()> {
        let what = format!("manifest {repo}:{reference}");
        self.runtime.block_on(async {
            let response = self
                .http
                .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
                .header("content-type", media_type)
                .body(manifest.to_vec())
                .send()
                .await
                .map_err(|source| Error::Http {
                    what: what.clone(),
                    source,
                })?;
            check(response, &what).await.map(drop)
        })
    }

    /// Pushes every blob of `image`, then its manifest under `repo:tag`; returns the manifest
    /// digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<String> {
        for layer in &image.layers {
            self.push_blob(repo, layer)?;
        }
        self.push_blob(repo, &image.config)?;
        self.push_manifest(
            repo,
            tag,
            crate::image::MANIFEST_MEDIA_TYPE,
            &image.manifest,
        )?;
        Ok(image.manifest_digest())
    }
}

async fn check(response: reqwest::Response, what: &str) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(Error::Status {
        what: what.to_owned(),
        status: status.as_u16(),
        body,
    })
}
