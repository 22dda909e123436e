//! Early verification: a manifest that lands in containerd's content store (seen by
//! [`crate::catalog::content_watch`]) is verified at once, while its layers still download, so
//! the verdict is cached by the time containerd creates the image record and the daemon judges
//! it. The repository comes from the `containerd.io/distribution.source.*` label containerd puts
//! on fetched content; an index's entries are remembered so that a platform manifest is verified
//! with the index that lists it (cosign signs either).
//!
//! Only a trusted verdict is kept ([`crate::verdict::VerdictCache::offer_trusted`]): an early
//! verdict may lack context the image record gives, and anything short of trusted is simply
//! worked out again when the image is judged. Nothing here allows anything by itself.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use crate::{
    catalog::{oci, Containerd},
    discover::RegistryClient,
    policy::Policy,
    verdict::{Outcome, VerdictCache},
    verify::reference::ImageRef,
};

/// Index entries remembered (manifest → index); emptied when full.
const MAX_PARENTS: usize = 4096;
/// How long to wait for containerd to label a new blob with its source.
const LABEL_WAIT: Duration = Duration::from_secs(2);
/// Early verifications running at once.
const CONCURRENCY: usize = 8;

/// Verifies manifests as they land.
pub struct Prefetcher {
    containerd: Containerd,
    client: Arc<RegistryClient>,
    cache: Arc<VerdictCache>,
    policy: RwLock<Arc<Policy>>,
    blob_dir: PathBuf,
    parents: Mutex<HashMap<String, String>>,
    /// Registries with a port seen in image names: containerd's source label drops the port.
    registries: Mutex<std::collections::BTreeSet<String>>,
    permits: tokio::sync::Semaphore,
}

impl Prefetcher {
    /// A prefetcher reading blobs from `blob_dir` (`.../content/blobs/sha256`).
    #[must_use]
    pub fn new(
        containerd: Containerd,
        client: Arc<RegistryClient>,
        cache: Arc<VerdictCache>,
        policy: Arc<Policy>,
        blob_dir: PathBuf,
    ) -> Self {
        Self {
            containerd,
            client,
            cache,
            policy: RwLock::new(policy),
            blob_dir,
            parents: Mutex::new(HashMap::new()),
            registries: Mutex::new(std::collections::BTreeSet::new()),
            permits: tokio::sync::Semaphore::new(CONCURRENCY),
        }
    }

    /// The policy changed (SIGHUP).
    pub fn set_policy(&self, policy: Arc<Policy>) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }

    /// Remembers the registry of an image the daemon judged (for labels without a port).
    pub fn saw_registry(&self, registry: &str) {
        if registry.contains(':') {
            let mut known = self
                .registries
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if known.len() < 1024 {
                known.insert(registry.to_owned());
            }
        }
    }

    /// The registries a label's host may stand for: containerd writes the label key with the
    /// host name only, so `127.0.0.1` is whichever known `127.0.0.1:PORT` registries there are
    /// (from image names and the insecure list), or the host itself when none.
    fn registries_for(&self, host: &str) -> Vec<String> {
        let known = self
            .registries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<String> = known
            .iter()
            .chain(self.client.config().insecure_registries.iter())
            .filter(|registry| registry.split_once(':').is_some_and(|(h, _)| h == host))
            .cloned()
            .collect();
        found.sort();
        found.dedup();
        if found.is_empty() {
            found.push(host.to_owned());
        }
        found
    }

    /// A blob landed: if it is a manifest (or index), verify it early.
    pub async fn landed(self: Arc<Self>, digest: String) {
        let Ok(_permit) = self.permits.acquire().await else {
            return;
        };
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return;
        };
        let path = self.blob_dir.join(hex);
        // Layers are large and not JSON: only documents of manifest size are read.
        let small =
            std::fs::metadata(&path).is_ok_and(|meta| meta.len() <= oci::MAX_DOCUMENT_BYTES as u64);
        if !small {
            return;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        if oci::verify_digest(&digest, &bytes).is_err() {
            return;
        }
        match oci::parse_document(&digest, "", &bytes) {
            Ok(oci::Document::Index(entries)) => {
                let mut parents = self.parents.lock().unwrap_or_else(PoisonError::into_inner);
                if parents.len() + entries.len() > MAX_PARENTS {
                    parents.clear();
                }
                for entry in entries {
                    parents.insert(entry.digest, digest.clone());
                }
            }
            Ok(oci::Document::Manifest { .. }) => self.verify(&digest).await,
            // Configs, layers, or documents without a media type: nothing to verify early.
            Err(_) => {}
        }
    }

    async fn verify(&self, digest: &str) {
        let index = self
            .parents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned();
        let Some(sources) = self.sources(digest).await else {
            tracing::debug!(%digest, "new manifest without a source label; verified when its image appears");
            return;
        };
        let policy = Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner));
        for source in sources {
            let Ok(image) = ImageRef::parse(&source) else {
                continue;
            };
            let started = std::time::Instant::now();
            let verdict = crate::discover::verify_digest(
                &self.client,
                &policy,
                None,
                &image,
                digest,
                index.as_deref(),
            )
            .await;
            let elapsed = started.elapsed();
            crate::metrics::global().early_verification(verdict.outcome, elapsed);
            tracing::info!(
                image = %source,
                %digest,
                outcome = ?verdict.outcome,
                millis = elapsed.as_millis() as u64,
                "verified early, as the manifest landed"
            );
            if verdict.outcome == Outcome::Trusted {
                let key = crate::discover::verdict_key(&policy, &image, digest);
                self.cache.offer_trusted(key, verdict).await;
            }
        }
    }

    /// `registry/repository` names the blob was pulled from, waiting briefly for containerd
    /// to label it.
    async fn sources(&self, digest: &str) -> Option<Vec<String>> {
        let namespaces = self.containerd.namespaces().await.ok()?;
        let started = std::time::Instant::now();
        while started.elapsed() < LABEL_WAIT {
            for namespace in &namespaces {
                if let Ok(found) = self
                    .containerd
                    .distribution_sources(namespace, digest)
                    .await
                {
                    if !found.is_empty() {
                        return Some(
                            found
                                .iter()
                                .filter_map(|source| source.split_once('/'))
                                .flat_map(|(host, repo)| {
                                    self.registries_for(host)
                                        .into_iter()
                                        .map(move |registry| format!("{registry}/{repo}"))
                                })
                                .collect(),
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}
