//! Verification off the event loop: every image is verified in its own task, under an overall
//! deadline, a per-registry and a global concurrency limit, and a bounded queue. The loop only
//! starts verifications and applies their results, so a registry that answers slowly (or not
//! at all) delays the verdicts of its own images, never the loop: containerd's events, other
//! images' verdicts, the status socket and the watchdog keep turning.
//!
//! An image waiting for its verdict is not trusted (its containers are denied in enforce mode):
//! verification pending fails closed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, Semaphore};

use super::{table::ImageKey, Verifier};
use crate::{
    catalog::CatalogImage,
    verdict::{Outcome, Verdict},
    verify::reference::ImageRef,
};

/// The bounds on verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyLimits {
    /// The overall time one image's verification may take once its registry has a slot for it
    /// (waiting for a global slot included); past it the image gets an `error` verdict and is
    /// retried with back-off. A reconciliation's verdicts are all in within it too: those not
    /// in by then are `error` and retried, so a table is swapped in at most this late.
    pub deadline: Duration,
    /// Verifications running at once against one registry.
    pub per_registry: usize,
    /// Verifications running at once in all.
    pub total: usize,
    /// Verifications started and not finished, at most; an image beyond it gets an `error`
    /// verdict at once and is retried with back-off.
    pub queue: usize,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
            per_registry: 8,
            total: 16,
            queue: 4096,
        }
    }
}

/// The semaphores behind [`VerifyLimits`], shared by the event path and reconciliations.
#[derive(Debug)]
pub struct Slots {
    limits: VerifyLimits,
    total: Arc<Semaphore>,
    registries: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Slots {
    /// Slots for `limits`.
    #[must_use]
    pub fn new(limits: VerifyLimits) -> Self {
        Self {
            limits,
            total: Arc::new(Semaphore::new(limits.total.max(1))),
            registries: Mutex::new(HashMap::new()),
        }
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> VerifyLimits {
        self.limits
    }

    /// Verifications that may still start against `registry` now.
    #[must_use]
    pub fn available(&self, registry: &str) -> usize {
        self.registry(registry).available_permits()
    }

    fn registry(&self, registry: &str) -> Arc<Semaphore> {
        let mut registries = self
            .registries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            registries
                .entry(registry.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_registry.max(1)))),
        )
    }

    /// Verifies `image` within the deadline and the concurrency limits. Never fails: a
    /// verification past its deadline is an `error` verdict (`true` in the second place).
    pub async fn verify(&self, verifier: &Verifier, image: &CatalogImage) -> (Verdict, bool) {
        let registry = registry_of(&image.resolved.record.name);
        let per_registry = self.registry(&registry);
        let total = Arc::clone(&self.total);
        // Waiting for the registry's own slot is not counted (a slow registry's queue is its
        // own, and its images are pending, untrusted, meanwhile); from there the deadline holds.
        let _registry = per_registry.acquire_owned().await;
        let started = std::time::Instant::now();
        let work = async {
            let _total = total.acquire_owned().await;
            verifier.verdict(image).await
        };
        match tokio::time::timeout(self.limits.deadline, work).await {
            Ok(verdict) => (verdict, false),
            Err(_) => {
                crate::metrics::global().verification(Outcome::Error, started.elapsed());
                crate::metrics::global().verification_deadline();
                tracing::warn!(
                    image = %image.resolved.record.name,
                    namespace = %image.resolved.record.namespace,
                    digest = %image.resolved.manifest_digest,
                    %registry,
                    deadline_s = self.limits.deadline.as_secs_f64(),
                    "verification past its deadline: error verdict (denied in enforce), retried later"
                );
                (
                    unverified(
                        verifier,
                        image,
                        &format!(
                            "verification did not finish within {} s (registry {registry})",
                            self.limits.deadline.as_secs_f64()
                        ),
                    ),
                    true,
                )
            }
        }
    }
}

/// The registry an image name is fetched from (`""` when the name does not parse).
fn registry_of(name: &str) -> String {
    ImageRef::parse(name).map_or_else(|_| String::new(), |r| r.registry)
}

/// An `error` verdict for an image whose verification did not happen (deadline, queue full).
#[must_use]
pub fn unverified(verifier: &Verifier, image: &CatalogImage, detail: &str) -> Verdict {
    let policy = &verifier.policy;
    let rule = ImageRef::parse(&image.resolved.record.name)
        .map_or(&policy.default, |reference| policy.rule_for(&reference));
    Verdict::error(
        &image.resolved.record.name,
        &image.resolved.manifest_digest,
        &rule.scope,
        rule.mode,
        &policy.hash,
        Some(crate::verify::FailureKind::Artifact),
        detail.to_owned(),
    )
}

/// A verification that finished (or ran out of time).
#[derive(Debug)]
pub struct Completed {
    pub(super) key: ImageKey,
    pub(super) generation: u64,
    pub(super) image: CatalogImage,
    pub(super) verdict: Verdict,
    /// It ran past the deadline (or was refused by a full queue): retried with back-off.
    pub(super) retry: bool,
}

/// A verification running for one image.
#[derive(Debug)]
pub struct InFlight {
    pub(super) generation: u64,
    /// The manifest being verified.
    pub(super) digest: String,
    /// The image as catalogued since the verification started (its layers located once
    /// unpacked): recorded with the verdict instead of the image the verification began with.
    pub(super) latest: Option<CatalogImage>,
    /// Whether the image (latest known) has no located layer yet.
    pub(super) unpacked: bool,
}

/// A retry of an image whose verification ran out of time.
#[derive(Debug, Clone)]
pub struct VerifyRetry {
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next: tokio::time::Instant,
}

/// The verifications in flight and their results.
pub struct Verifications {
    pub(super) slots: Arc<Slots>,
    tx: mpsc::UnboundedSender<Completed>,
    rx: mpsc::UnboundedReceiver<Completed>,
    /// The verification whose result counts, per image.
    pub(super) in_flight: HashMap<ImageKey, InFlight>,
    next_generation: u64,
    /// Images whose verification ran out of time, retried with back-off.
    pub(super) retries: HashMap<ImageKey, VerifyRetry>,
}

impl Verifications {
    pub(super) fn new(limits: VerifyLimits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            slots: Arc::new(Slots::new(limits)),
            tx,
            rx,
            in_flight: HashMap::new(),
            next_generation: 0,
            retries: HashMap::new(),
        }
    }

    /// Whether the queue has room for one more image (one already queued always has).
    pub(super) fn has_room(&self, key: &ImageKey) -> bool {
        self.in_flight.contains_key(key) || self.in_flight.len() < self.slots.limits.queue
    }

    /// Starts verifying `image` in its own task; a verification already running for the same
    /// image no longer counts (its result is dropped when it arrives).
    pub(super) fn start(&mut self, verifier: Verifier, key: ImageKey, image: CatalogImage) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.in_flight.insert(
            key.clone(),
            InFlight {
                generation,
                digest: image.resolved.manifest_digest.clone(),
                latest: None,
                unpacked: !image.layers.is_empty(),
            },
        );
        let slots = Arc::clone(&self.slots);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            // The work runs in a task of its own so that a panic in it still gives a
            // (failing) result rather than an image pending forever.
            let work = {
                let slots = Arc::clone(&slots);
                let verifier = verifier.clone();
                let image = image.clone();
                tokio::spawn(async move { slots.verify(&verifier, &image).await })
            };
            let (verdict, retry) = match work.await {
                Ok(done) => done,
                Err(error) => {
                    tracing::error!(%error, image = %key.name, "verification task failed; the image vouches for nothing");
                    (
                        unverified(&verifier, &image, "its verification task failed"),
                        true,
                    )
                }
            };
            let _ = tx.send(Completed {
                key,
                generation,
                image,
                verdict,
                retry,
            });
        });
    }

    /// The next finished verification (never completes while none is in flight... nor after,
    /// until one is started: the sender lives here).
    pub(super) async fn next(&mut self) -> Option<Completed> {
        self.rx.recv().await
    }

    /// Whether `done` is the result that counts for its image; forgets it as in flight if so,
    /// and puts in the image as catalogued last (its layers may have been located meanwhile).
    pub(super) fn take(&mut self, done: &mut Completed) -> bool {
        match self.in_flight.get(&done.key) {
            Some(running) if running.generation == done.generation => {
                if let Some(latest) = self
                    .in_flight
                    .remove(&done.key)
                    .and_then(|running| running.latest)
                {
                    done.image = latest;
                }
                true
            }
            _ => false,
        }
    }

    /// The same manifest is being verified already: keep `image` (catalogued again, e.g. its
    /// layers now located) for its result. `false` when no verification of that manifest runs.
    pub(super) fn update(&mut self, key: &ImageKey, image: &CatalogImage) -> bool {
        match self.in_flight.get_mut(key) {
            Some(running) if running.digest == image.resolved.manifest_digest => {
                running.unpacked = !image.layers.is_empty();
                running.latest = Some(image.clone());
                true
            }
            _ => false,
        }
    }

    /// Forgets an image (deleted, or judged again from scratch).
    pub(super) fn forget(&mut self, key: &ImageKey) {
        self.in_flight.remove(key);
        self.retries.remove(key);
    }

    /// Schedules (or pushes back) the retry of an image whose verification did not happen.
    pub(super) fn schedule_retry(&mut self, key: ImageKey) -> VerifyRetry {
        let attempts = self.retries.get(&key).map_or(0, |r| r.attempts) + 1;
        let retry = VerifyRetry {
            attempts,
            next: tokio::time::Instant::now() + super::retry_delay(attempts),
        };
        self.retries.insert(key, retry.clone());
        retry
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{
        catalog::{containerd::ResolvedImage, ImageRecord, Layer},
        enforce::LayerId,
    };

    fn image(layers: Vec<Layer>) -> CatalogImage {
        CatalogImage {
            resolved: ResolvedImage {
                record: ImageRecord {
                    namespace: "default".into(),
                    name: "r.test/app:1".into(),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: format!("sha256:{}", "1".repeat(64)),
                },
                index_digest: None,
                manifest_digest: format!("sha256:{}", "1".repeat(64)),
                config_digest: format!("sha256:{}", "2".repeat(64)),
                chain_ids: vec![format!("sha256:{}", "3".repeat(64))],
            },
            layers,
        }
    }

    fn verifier() -> Verifier {
        let policy = crate::policy::file::parse(
            std::path::Path::new("/p.toml"),
            "version = 1\n[default]\nrequire = \"accept\"\n",
        )
        .unwrap();
        Verifier {
            policy: Arc::new(policy),
            client: Arc::new(
                crate::discover::RegistryClient::new(crate::discover::DiscoveryConfig::default())
                    .unwrap(),
            ),
            cache: Arc::new(crate::verdict::VerdictCache::new(None)),
        }
    }

    /// An image whose layers are located while its verification runs (a pull: the image
    /// record first, its layers unpacked after) is recorded with those layers; a result of a
    /// verification that no longer counts is dropped.
    #[tokio::test]
    async fn the_latest_catalogue_goes_with_the_verdict_and_stale_results_are_dropped() {
        let mut verifications = Verifications::new(VerifyLimits::default());
        let key = ImageKey {
            namespace: "default".into(),
            name: "r.test/app:1".into(),
        };
        verifications.start(verifier(), key.clone(), image(Vec::new()));
        assert!(!verifications.in_flight[&key].unpacked);
        let layer = Layer {
            chain_id: format!("sha256:{}", "3".repeat(64)),
            dir: "/x/snapshots/1/fs".into(),
            id: LayerId::new(1, 2),
        };
        assert!(verifications.update(&key, &image(vec![layer.clone()])));
        assert!(verifications.in_flight[&key].unpacked);
        let mut done = verifications.next().await.unwrap();
        assert!(verifications.take(&mut done));
        assert_eq!(
            done.image.layers.len(),
            1,
            "recorded with the layers located since"
        );
        assert_eq!(done.verdict.outcome, Outcome::Trusted);
        assert!(verifications.in_flight.is_empty());

        // Started twice: only the second result counts.
        verifications.start(verifier(), key.clone(), image(Vec::new()));
        verifications.start(verifier(), key.clone(), image(vec![layer]));
        let mut counted = 0;
        for _ in 0..2 {
            let mut done = verifications.next().await.unwrap();
            if verifications.take(&mut done) {
                counted += 1;
                assert_eq!(done.image.layers.len(), 1);
            }
        }
        assert_eq!(counted, 1);
    }

    /// A registry that never answers holds only its own slots: with them all taken (and one
    /// more verification waiting), another registry's image is verified at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_registry_holds_only_its_own_slots() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let policy = crate::policy::file::parse(
            std::path::Path::new("/p.toml"),
            &format!(
                "version = 1\n[default]\nrequire = \"accept\"\n[[scope]]\nmatch = \"{silent}/**\"\n\
                 require = \"signatures\"\n[[scope.keys]]\npath = \"{}\"\n",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/fixtures/generated/legacy-keys/p256.pub")
                    .display()
            ),
        )
        .unwrap();
        let verifier = Verifier {
            policy: Arc::new(policy),
            client: Arc::new(
                crate::discover::RegistryClient::new(crate::discover::DiscoveryConfig {
                    insecure_registries: vec![silent.clone()],
                    request_timeout: Duration::from_secs(3600),
                    ..crate::discover::DiscoveryConfig::default()
                })
                .unwrap(),
            ),
            cache: Arc::new(crate::verdict::VerdictCache::new(None)),
        };
        let slots = Arc::new(Slots::new(VerifyLimits {
            deadline: Duration::from_secs(3600),
            per_registry: 2,
            ..VerifyLimits::default()
        }));
        let mut slow = Vec::new();
        for index in 0..3 {
            let mut on_silent = image(Vec::new());
            on_silent.resolved.record.name = format!("{silent}/app:{index}");
            let (slots, verifier) = (Arc::clone(&slots), verifier.clone());
            slow.push(tokio::spawn(async move {
                slots.verify(&verifier, &on_silent).await
            }));
        }
        while slots.available(&silent) > 0 {
            tokio::task::yield_now().await;
        }
        let (verdict, timed_out) = slots.verify(&verifier, &image(Vec::new())).await;
        assert_eq!(verdict.outcome, Outcome::Trusted);
        assert!(!timed_out);
        assert!(
            slow.iter().all(|task| !task.is_finished()),
            "the silent registry's images wait"
        );
        for task in slow {
            task.abort();
        }
        server.abort();
    }
}
