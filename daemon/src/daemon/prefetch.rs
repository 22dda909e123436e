//! Early verification: a manifest that lands in containerd's content store (seen by
//! [`crate::catalog::content_watch`]) is verified at once, while its layers still download, so
//! the verdict is cached by the time containerd creates the image record and the daemon judges
//! it. The repository comes from the `containerd.io/distribution.source.*` label containerd puts
//! on fetched content; an index's entries are remembered so that a platform manifest is verified
//! with the index that lists it (cosign signs either). That label names the registry's host
//! without its port, so only a registry the host names unambiguously is asked
//! ([`registry_for_host`]); anything else waits for the image record, which names it exactly.
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
    catalog::Containerd,
    discover::RegistryClient,
    oci,
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
    /// Registries seen in image names: containerd's source label drops the port.
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
        let mut known = self
            .registries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.len() < 1024 {
            known.insert(registry.to_owned());
        }
    }

    /// The one registry a source label's `host` stands for, by [`registry_for_host`] over the
    /// registries of images seen and the insecure list.
    fn registry_for(&self, host: &str) -> Option<String> {
        let known = self
            .registries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        registry_for_host(
            host,
            known
                .iter()
                .chain(self.client.config().insecure_registries.iter())
                .map(String::as_str),
        )
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
            Ok(oci::Document::Index(index)) => {
                let mut parents = self.parents.lock().unwrap_or_else(PoisonError::into_inner);
                if parents.len() + index.manifests().len() > MAX_PARENTS {
                    parents.clear();
                }
                for entry in index.manifests() {
                    parents.insert(entry.digest().to_string(), digest.clone());
                }
            }
            Ok(oci::Document::Manifest(_)) => self.verify(&digest).await,
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
    /// to label it. A source whose registry is ambiguous is left out (and logged).
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
                        let mut sources: Vec<String> = found
                            .iter()
                            .filter_map(|source| source.split_once('/'))
                            .filter_map(|(host, repo)| match self.registry_for(host) {
                                Some(registry) => Some(format!("{registry}/{repo}")),
                                None => {
                                    tracing::info!(%digest, host, repository = repo, "not verified early: several known registries share this host and containerd's source label has no port; verified when its image appears");
                                    None
                                }
                            })
                            .collect();
                        sources.sort();
                        sources.dedup();
                        return Some(sources);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// The registry a `containerd.io/distribution.source.<host>` label stands for, given the
/// registries the daemon knows (`host` or `host:port`, from image names and the insecure
/// list). containerd writes the label with the host name only, so:
///
/// - exactly one known registry on `host` (with or without a port): that one;
/// - none: `host` itself, as a reference without a port names it (`docker.io`, `ghcr.io` on a
///   node's first pull);
/// - several (`127.0.0.1:5000` and `127.0.0.1:5001`, or `host` and `host:5000`): `None`,
///   since asking any of them may ask a registry the image did not come from.
#[must_use]
pub fn registry_for_host<'a>(
    host: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let candidates: std::collections::BTreeSet<&str> = known
        .into_iter()
        .filter(|registry| host_of(registry).eq_ignore_ascii_case(host))
        .collect();
    let mut candidates = candidates.into_iter();
    match (candidates.next(), candidates.next()) {
        (None, _) => Some(host.to_owned()),
        (Some(only), None) => Some(only.to_owned()),
        (Some(_), Some(_)) => None,
    }
}

/// The host of a registry name without its port, as containerd writes it in source labels
/// (Go's `url.Hostname`: `[::1]:5000` → `::1`).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_host_names_one_registry_or_none() {
        let known = [
            "127.0.0.1:5000",
            "127.0.0.1:5001",
            "localhost:5000",
            "ghcr.io",
            "registry.example:443",
            "registry.example",
            "[::1]:5000",
        ];
        // Two registries on one host: neither is asked (the case).
        assert_eq!(registry_for_host("127.0.0.1", known), None);
        // A host with and without a port are two registries too.
        assert_eq!(registry_for_host("registry.example", known), None);
        // One registry on the host: the exact host and port.
        assert_eq!(
            registry_for_host("localhost", known).as_deref(),
            Some("localhost:5000")
        );
        assert_eq!(
            registry_for_host("::1", known).as_deref(),
            Some("[::1]:5000")
        );
        assert_eq!(
            registry_for_host("ghcr.io", known).as_deref(),
            Some("ghcr.io")
        );
        assert_eq!(
            registry_for_host("LOCALHOST", known).as_deref(),
            Some("localhost:5000"),
            "host names are case-insensitive"
        );
        // A host with no known registry: the host itself (its default port).
        assert_eq!(
            registry_for_host("docker.io", known).as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            registry_for_host("127.0.0.1", ["127.0.0.1:5000"]).as_deref(),
            Some("127.0.0.1:5000")
        );
        // The same registry known twice (image names and the insecure list) is one.
        assert_eq!(
            registry_for_host("127.0.0.1", ["127.0.0.1:5000", "127.0.0.1:5000"]).as_deref(),
            Some("127.0.0.1:5000")
        );
        // A host that merely starts like another is not it.
        assert_eq!(
            registry_for_host("127.0.0.1", ["127.0.0.10:5000"]).as_deref(),
            Some("127.0.0.1")
        );
    }
}
