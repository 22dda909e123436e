//! `imagegate daemon`: follows containerd, verifies what it pulls, and keeps the kernel's layer
//! table true.
//!
//! The order of work is what makes it fail closed: a layer reaches the kernel map only after a
//! trusted verdict for an image that contains it, so a container that starts before its image's
//! verification ends is denied (enforce) or reported (audit), never silently allowed.

pub mod describe;
pub mod explain;
pub mod image_ids;
pub mod prefetch;
pub mod serve;
pub mod table;
pub mod verifying;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use table::{Changes, ImageEntry, ImageKey, LayerOwner, LayerTable};

use crate::{
    catalog::{self, CatalogImage, Containerd},
    discover::RegistryClient,
    enforce::{Backend, ContainerState, ContainerTrust, Decision, LayerId, LayerState},
    policy::Policy,
    verdict::{Verdict, VerdictCache},
    verify::reference::ImageRef,
};

/// Why a daemon step failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("containerd")]
    Containerd(#[from] catalog::ContainerdError),
    #[error("catalog")]
    Catalog(#[from] catalog::CatalogError),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the policy changed while the table was rebuilt; rebuilt again under the new one")]
    Stale,
    #[error("enforcement backend {backend}")]
    Backend {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Errors kept for `status`.
const LAST_ERRORS: usize = 10;

/// The first retry of a record that could not be catalogued comes after this; each failed
/// attempt doubles the wait, up to [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest wait between two attempts at cataloguing a record.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// Records listed one by one in `status` (all are counted).
const STATUS_UNCATALOGUED: usize = 100;

/// How long to wait before attempt `failed + 1` at cataloguing a record that failed `failed`
/// times (at least once).
#[must_use]
pub fn retry_delay(failed: u32) -> std::time::Duration {
    let doublings = failed.saturating_sub(1).min(31);
    RETRY_FIRST
        .saturating_mul(1_u32 << doublings)
        .min(RETRY_MAX)
}

/// An image record containerd has but the daemon could not catalogue (read its manifest,
/// config or layer snapshots). It vouches for nothing (its layers are denied unless another
/// trusted image holds them) until a retry succeeds.
#[derive(Debug, Clone)]
pub struct Uncatalogued {
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next: tokio::time::Instant,
    /// Why the last attempt failed.
    pub error: String,
}

/// Everything that decides: policy, registry access, verdict cache.
#[derive(Clone)]
pub struct Verifier {
    /// The policy in force.
    pub policy: Arc<Policy>,
    /// Registry client for signature discovery.
    pub client: Arc<RegistryClient>,
    /// Verdicts, persisted.
    pub cache: Arc<VerdictCache>,
}

impl Verifier {
    /// Verifies one image's platform manifest under its name (counted in the metrics).
    pub async fn verdict(&self, image: &CatalogImage) -> Verdict {
        let started = std::time::Instant::now();
        let verdict = self.judge(image).await;
        crate::metrics::global().verification(verdict.outcome, started.elapsed());
        verdict
    }

    async fn judge(&self, image: &CatalogImage) -> Verdict {
        let record = &image.resolved.record;
        let reference = match ImageRef::parse(&record.name) {
            Ok(reference) => reference,
            Err(_) => {
                // An image name the policy cannot even match is judged by the default rule
                // through verify_image's own error path: never trusted.
                return crate::discover::verify_image(
                    &self.client,
                    &self.policy,
                    None,
                    &record.name,
                    &crate::oci::host_platform(),
                )
                .await;
            }
        };
        crate::discover::verify_digest(
            &self.client,
            &self.policy,
            Some(&self.cache),
            &reference,
            &image.resolved.manifest_digest,
            image.resolved.index_digest.as_deref(),
        )
        .await
    }
}

/// The daemon's state: the table, the container writable layers, and the backend it mirrors to.
pub struct Daemon<B: Backend> {
    /// The kernel (or fanotify) side.
    pub backend: B,
    /// Verified layers by image.
    pub table: LayerTable,
    /// Writable layers of containers: (namespace, snapshot key) → layer.
    pub writable: HashMap<(String, String), (LayerId, PathBuf)>,
    /// The last verdict per image.
    pub verdicts: HashMap<ImageKey, Verdict>,
    /// Decision events written out so far.
    pub events_seen: u64,
    /// Containers, for naming them in events.
    pub containers: describe::Containers,
    /// The trust of each container the backend holds, by its root's writable layer directory
    /// (the mirror of the backend's container table).
    container_trust: HashMap<LayerId, ContainerState>,
    /// Which container each root was (namespace, id), kept a while after the container is gone
    /// so that its last decisions still name it: `ctr run --rm` removes a denied container
    /// before its event is described.
    root_names: HashMap<LayerId, ((String, String), Option<std::time::Instant>)>,
    /// A reconciliation is rebuilding the table: containers are synchronised once at its end.
    reconciling: bool,
    /// The backend's mode and drift setting, for `status`.
    pub settings: Option<(crate::enforce::Mode, crate::enforce::Drift)>,
    /// Records that could not be catalogued, retried with back-off.
    pub uncatalogued: HashMap<ImageKey, Uncatalogued>,
    /// Records named by an image id (CRI's `sha256:<id>`): never judged ([`image_ids`]).
    pub image_ids: image_ids::ImageIds,
    /// The most recent errors (newest last), for `status`.
    errors: std::collections::VecDeque<(std::time::SystemTime, String)>,
    /// Directory of every layer the table or the writable set knows, for event paths.
    layer_dirs: HashMap<LayerId, PathBuf>,
    paths: describe::PathFinder,
    /// Early verification of manifests as they land in the content store.
    prefetch: Option<Arc<prefetch::Prefetcher>>,
    /// The content store's blob directory, watched once it exists.
    blob_dir: Option<PathBuf>,
    verifier: Verifier,
    containerd: Containerd,
    /// Verifications running in their own tasks, and their results.
    verifications: verifying::Verifications,
    /// While a reconciliation's table is computed aside: the images events touched meanwhile,
    /// judged again once the new table is swapped in.
    rebuild_dirty: Option<HashSet<ImageKey>>,
    /// A table was swapped in at least once (before that, containers keep the trust the
    /// backend holds: pinned BPF maps outlive the daemon).
    built: bool,
    /// Layers the backend had no room for (its table is full), with the state they should
    /// have: unverified (denied) until a deletion makes room.
    refused: HashMap<LayerId, LayerState>,
    /// Decisions held back until their container is known ([`Self::ready_decisions`]).
    held: Vec<(Decision, std::time::Instant)>,
}

/// How long a decision from a container the daemon does not know yet waits for it before it
/// is described anyway.
pub const EVENT_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// A reconciliation's catalogue: every record containerd has, catalogued (or not), waiting for
/// its verdicts ([`Daemon::verify_rebuild`]).
pub struct Rebuild {
    namespaces: Vec<String>,
    total: usize,
    images: Vec<CatalogImage>,
    /// Image-id records (never judged) and the manifest each resolves to.
    image_ids: HashMap<ImageKey, Option<String>>,
    failed: Vec<(ImageKey, catalog::CatalogError)>,
    started: std::time::Instant,
    catalogued: std::time::Duration,
}

/// A reconciliation's catalogue with its verdicts, computed off the event loop; swapped in by
/// [`Daemon::finish_rebuild`].
pub struct Rebuilt {
    rebuild: Rebuild,
    /// (image, verdict, ran out of time) in listing order.
    judged: Vec<(CatalogImage, Verdict, bool)>,
    /// The policy the verdicts are under.
    policy_hash: String,
}

impl Rebuilt {
    /// The policy its verdicts were reached under (a rebuild under a policy replaced since is
    /// stale: it must not be swapped in).
    #[must_use]
    pub fn policy_hash(&self) -> &str {
        &self.policy_hash
    }
}

fn backend_error<E: std::error::Error + Send + Sync + 'static>(
    backend: &'static str,
) -> impl Fn(E) -> DaemonError {
    move |source| DaemonError::Backend {
        backend,
        source: Box::new(source),
    }
}

impl<B: Backend> Daemon<B> {
    /// A daemon over a ready backend (scope, mode and drift already set).
    pub fn new(backend: B, verifier: Verifier, containerd: Containerd) -> Self {
        Self {
            backend,
            table: LayerTable::default(),
            writable: HashMap::new(),
            verdicts: HashMap::new(),
            events_seen: 0,
            containers: describe::Containers::default(),
            container_trust: HashMap::new(),
            root_names: HashMap::new(),
            reconciling: false,
            settings: None,
            uncatalogued: HashMap::new(),
            image_ids: image_ids::ImageIds::default(),
            errors: std::collections::VecDeque::new(),
            layer_dirs: HashMap::new(),
            paths: describe::PathFinder::default(),
            prefetch: None,
            blob_dir: None,
            verifier,
            containerd,
            verifications: verifying::Verifications::new(verifying::VerifyLimits::default()),
            rebuild_dirty: None,
            built: false,
            refused: HashMap::new(),
            held: Vec::new(),
        }
    }

    /// Sets the verification bounds (deadline, concurrency, queue). Before any verification.
    pub fn set_verify_limits(&mut self, limits: verifying::VerifyLimits) {
        self.verifications = verifying::Verifications::new(limits);
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &Arc<Policy> {
        &self.verifier.policy
    }

    /// Replaces the policy (SIGHUP) and re-judges every image: the new table is computed aside
    /// and swapped in at once ([`Self::reconcile`]); if that fails the old table stays.
    pub async fn set_policy(&mut self, policy: Arc<Policy>) -> Result<(), DaemonError> {
        self.replace_policy(policy).await;
        self.reconcile().await
    }

    /// Replaces the policy for everything judged from now on; the table is the old policy's
    /// until a reconciliation under the new one is swapped in.
    pub async fn replace_policy(&mut self, policy: Arc<Policy>) {
        if let Some(prefetch) = &self.prefetch {
            prefetch.set_policy(Arc::clone(&policy));
        }
        let removed = self.verifier.cache.keep_only_policy(&policy.hash).await;
        tracing::info!(removed, "verdicts of the previous policy forgotten");
        self.verifier.policy = policy;
        if let Err(error) = self.revoke_first() {
            self.note_error("revoking what the new policy no longer vouches for", &error);
            tracing::warn!(error = %crate::telemetry::error_chain(&error), "revoking what the new policy no longer vouches for failed; the rebuild's swap will");
        }
    }

    /// Revokes first: what the new policy can be seen not to vouch for without a registry stops
    /// vouching at once, before the new table is computed (which takes registry round trips):
    /// an image its scope now rejects outright, and a trusted image whose accepted signatures
    /// were all made with keys the new policy dropped ([`Verdict::may_still_satisfy`]). The
    /// latter is pending (`error`) until the rebuild judges it. Everything else waits for the
    /// swap.
    fn revoke_first(&mut self) -> Result<(), DaemonError> {
        let policy = Arc::clone(&self.verifier.policy);
        let revoked: Vec<(ImageKey, Verdict)> = self
            .table
            .images()
            .filter(|(_, entry)| entry.trusted || entry.audit)
            .filter_map(|(key, entry)| {
                let reference = ImageRef::parse(&key.name).ok()?;
                let rule = policy.rule_for(&reference);
                if matches!(rule.requirement, crate::policy::Requirement::Reject) {
                    let verdict =
                        crate::verdict::evaluate(&policy, &reference, &entry.manifest_digest, &[]);
                    return Some((key.clone(), verdict));
                }
                let old = self.verdicts.get(key)?;
                (entry.trusted && !old.may_still_satisfy(rule)).then(|| {
                    let verdict = Verdict::error(
                        &key.name,
                        &entry.manifest_digest,
                        &rule.scope,
                        rule.mode,
                        &policy.hash,
                        Some(crate::verify::FailureKind::Signature),
                        "signed only with keys the new policy no longer trusts; judged again by the reload".to_owned(),
                    );
                    (key.clone(), verdict)
                })
            })
            .collect();
        for (key, verdict) in revoked {
            let Some(entry) = self.table.get(&key) else {
                continue;
            };
            let entry = ImageEntry {
                manifest_digest: entry.manifest_digest.clone(),
                trusted: false,
                audit: verdict.mode == crate::policy::Mode::Audit,
                layers: entry.layers.clone(),
            };
            tracing::info!(image = %key.name, namespace = %key.namespace, outcome = ?verdict.outcome, "revoked at once: the new policy does not vouch for it");
            let changes = self.table.upsert(key.clone(), entry);
            self.verdicts.insert(key, verdict);
            self.apply(&changes)?;
        }
        Ok(())
    }

    /// Verifies manifests early, as they land in containerd's content store under `blob_dir`
    /// (see [`prefetch`]). Tried again at every reconciliation until the directory exists;
    /// without it (old kernel, no directory yet) images are verified at their image event.
    pub fn watch_content(&mut self, blob_dir: PathBuf) {
        self.blob_dir = Some(blob_dir);
        self.start_content_watch();
    }

    fn start_content_watch(&mut self) {
        let Some(blob_dir) = self.blob_dir.clone() else {
            return;
        };
        if self.prefetch.is_some() {
            return;
        }
        if !blob_dir.is_dir() {
            // containerd makes the directory at its first pull (2.x even makes the content
            // plugin's own directory only then); making it first (as containerd would, 0755)
            // lets that pull be seen too. Only inside containerd's root as it exists (not a
            // mistyped one); a read-only root just waits.
            let containerd_root = blob_dir.ancestors().nth(3);
            if !containerd_root.is_some_and(Path::is_dir)
                || std::fs::create_dir_all(&blob_dir).is_err()
            {
                return;
            }
        }
        let mut watch = match catalog::content_watch::ContentWatch::new(&blob_dir) {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(dir = %blob_dir.display(), error = %crate::telemetry::error_chain(&error), "content store not watched; images are verified at their image event");
                self.blob_dir = None;
                return;
            }
        };
        let prefetch = Arc::new(prefetch::Prefetcher::new(
            self.containerd.clone(),
            Arc::clone(&self.verifier.client),
            Arc::clone(&self.verifier.cache),
            Arc::clone(&self.verifier.policy),
            blob_dir.clone(),
        ));
        self.prefetch = Some(Arc::clone(&prefetch));
        tracing::info!(dir = %blob_dir.display(), "watching the content store for new manifests");
        tokio::spawn(async move {
            loop {
                match watch.next().await {
                    Ok(digests) => {
                        for digest in digests {
                            tokio::spawn(Arc::clone(&prefetch).landed(digest));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "content store watch failed; images are verified at their image event");
                        return;
                    }
                }
            }
        });
    }

    /// Applies table changes to the backend's layers, then its containers: an image's verdict
    /// is also its containers' trust.
    fn apply(&mut self, changes: &Changes) -> Result<(), DaemonError> {
        self.apply_layers(changes)?;
        self.sync_containers()
    }

    fn apply_layers(&mut self, changes: &Changes) -> Result<(), DaemonError> {
        let batch: Vec<(LayerId, Option<LayerState>)> = changes
            .verified
            .iter()
            .map(|layer| (*layer, Some(LayerState::Verified)))
            .chain(
                changes
                    .audit
                    .iter()
                    .map(|layer| (*layer, Some(LayerState::Audit))),
            )
            .chain(changes.unverified.iter().map(|layer| (*layer, None)))
            .collect();
        self.apply_batch(&batch)
    }

    /// Applies a batch of layer changes to the backend, removals first. A full backend table
    /// is a capacity, not a failure: a layer that does not fit stays unverified (denied),
    /// is remembered, counted and reported (the daemon stays up and ready, degraded), and is
    /// added once a removal makes room.
    fn apply_batch(&mut self, batch: &[(LayerId, Option<LayerState>)]) -> Result<(), DaemonError> {
        if batch.is_empty() {
            return Ok(());
        }
        let name = self.backend.name();
        let (removals, additions): (Vec<_>, Vec<_>) = batch
            .iter()
            .copied()
            .partition(|(_, state)| state.is_none());
        // A refused layer never reached the backend: nothing to remove there.
        let removals: Vec<_> = removals
            .into_iter()
            .filter(|(layer, _)| self.refused.remove(layer).is_none())
            .collect();
        if !removals.is_empty() {
            self.backend
                .apply_layers(&removals)
                .map_err(backend_error(name))?;
        }
        let mut additions: Vec<(LayerId, LayerState)> = additions
            .into_iter()
            .filter_map(|(layer, state)| Some((layer, state?)))
            .collect();
        // Room may have been made: the refused layers are tried again.
        if !removals.is_empty() && !self.refused.is_empty() {
            additions.extend(self.refused.iter().map(|(layer, state)| (*layer, *state)));
        }
        if additions.is_empty() {
            return Ok(());
        }
        let as_batch: Vec<(LayerId, Option<LayerState>)> = additions
            .iter()
            .map(|(layer, state)| (*layer, Some(*state)))
            .collect();
        let was_full = !self.refused.is_empty();
        match self.backend.apply_layers(&as_batch) {
            Ok(()) => {
                for (layer, _) in &additions {
                    self.refused.remove(layer);
                }
            }
            Err(error) if B::is_full(&error) => {
                // One by one: updates of layers already held, and additions while room lasts,
                // still go in.
                for (layer, state) in &additions {
                    match self.backend.set_layer(*layer, *state) {
                        Ok(()) => {
                            self.refused.remove(layer);
                        }
                        Err(error) if B::is_full(&error) => {
                            self.refused.insert(*layer, *state);
                        }
                        Err(error) => return Err(backend_error(name)(error)),
                    }
                }
            }
            Err(error) => return Err(backend_error(name)(error)),
        }
        let full = !self.refused.is_empty();
        crate::metrics::global().table_full(full, if full { self.refused.len() } else { 0 });
        if full && !was_full {
            tracing::error!(
                backend = name,
                refused = self.refused.len(),
                "the backend's layer table is full: new layers stay unverified (denied) until deletions make room"
            );
            self.note_error(
                "layer table full",
                &std::io::Error::other(format!(
                    "{} layers do not fit in the {name} layer table; they stay unverified (denied)",
                    self.refused.len()
                )),
            );
        } else if !full && was_full {
            tracing::info!(backend = name, "the backend's layer table has room again");
        }
        Ok(())
    }

    /// Layers the backend's full table had no room for (unverified, denied meanwhile).
    #[must_use]
    pub fn refused_layers(&self) -> usize {
        self.refused.len()
    }

    /// Starts verifying a catalogued image in its own task ([`verifying`]); its result is
    /// recorded by [`Self::complete`]. Until then the image vouches for nothing new: a manifest
    /// other than the one judged leaves the table at once (fail closed), while the same manifest
    /// under the same policy keeps its verdict (its layers were just located again).
    fn admit(&mut self, image: CatalogImage) -> Result<(), DaemonError> {
        let key = ImageKey {
            namespace: image.resolved.record.namespace.clone(),
            name: image.resolved.record.name.clone(),
        };
        if let Some(dirty) = self.rebuild_dirty.as_mut() {
            dirty.insert(key.clone());
        }
        if let Some(verdict) = self.verdicts.get(&key) {
            if verdict.digest == image.resolved.manifest_digest
                && verdict.policy_hash == self.verifier.policy.hash
                && verdict.outcome != crate::verdict::Outcome::Error
                && !self.verifications.in_flight.contains_key(&key)
            {
                let verdict = verdict.clone();
                return self.record(image, verdict);
            }
        }
        // Already being verified: the result will be recorded with this catalogue.
        if self.verifications.update(&key, &image) {
            return Ok(());
        }
        if self
            .table
            .get(&key)
            .is_some_and(|entry| entry.manifest_digest != image.resolved.manifest_digest)
        {
            self.verdicts.remove(&key);
            let changes = self.table.remove(&key);
            self.apply(&changes)?;
        }
        if !self.verifications.has_room(&key) {
            let verdict = verifying::unverified(
                &self.verifier,
                &image,
                "too many verifications waiting; retried later",
            );
            let retry = self.verifications.schedule_retry(key.clone());
            tracing::warn!(image = %key.name, namespace = %key.namespace, attempts = retry.attempts, "verification queue full: error verdict (denied in enforce), retried later");
            return self.record(image, verdict);
        }
        self.verifications.start(self.verifier.clone(), key, image);
        crate::metrics::global().observe_pending(self.verifications.in_flight.len());
        Ok(())
    }

    /// Records a verification's result if it is still the one that counts (an image judged
    /// again meanwhile, or deleted, drops it; one reached under a replaced policy is worked
    /// out again). A verification that ran out of time is retried with back-off.
    pub fn complete(&mut self, mut done: verifying::Completed) -> Result<(), DaemonError> {
        if !self.verifications.take(&mut done) {
            return Ok(());
        }
        crate::metrics::global().observe_pending(self.verifications.in_flight.len());
        let key = done.key.clone();
        if done.verdict.policy_hash != self.verifier.policy.hash {
            self.verifications
                .start(self.verifier.clone(), key, done.image);
            return Ok(());
        }
        if done.retry {
            let retry = self.verifications.schedule_retry(key.clone());
            tracing::info!(image = %key.name, namespace = %key.namespace, attempts = retry.attempts, retry_in_ms = u64::try_from(retry.next.saturating_duration_since(tokio::time::Instant::now()).as_millis()).unwrap_or(u64::MAX), "verification retried later");
        } else {
            self.verifications.retries.remove(&key);
        }
        if let Some(dirty) = self.rebuild_dirty.as_mut() {
            dirty.insert(key);
        }
        self.record(done.image, done.verdict)
    }

    /// The next verification that finished (pending forever while none runs).
    pub async fn next_verified(&mut self) -> verifying::Completed {
        match self.verifications.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// Waits for every verification in flight and records each (library callers and tests;
    /// the event loop records them as they come).
    pub async fn settle(&mut self) -> Result<(), DaemonError> {
        while !self.verifications.in_flight.is_empty() {
            let done = self.next_verified().await;
            self.complete(done)?;
        }
        Ok(())
    }

    /// Images whose verification is running (or queued), with the manifest digest.
    #[must_use]
    pub fn pending(&self) -> Vec<(ImageKey, String)> {
        let mut pending: Vec<(ImageKey, String)> = self
            .verifications
            .in_flight
            .iter()
            .map(|(key, running)| (key.clone(), running.digest.clone()))
            .collect();
        pending.sort();
        pending
    }

    /// Records a judged image in the table and mirrors the change to the backend.
    fn record(&mut self, image: CatalogImage, verdict: Verdict) -> Result<(), DaemonError> {
        let key = ImageKey {
            namespace: image.resolved.record.namespace.clone(),
            name: image.resolved.record.name.clone(),
        };
        self.note_judged(&key, &image, &verdict);
        let entry = entry_of(&image, &verdict);
        for layer in &image.layers {
            self.layer_dirs.insert(layer.id, layer.dir.clone());
        }
        let changes = self.table.upsert(key.clone(), entry);
        self.verdicts.insert(key, verdict);
        self.apply(&changes)
    }

    /// Logs a judged image and notes its registry.
    fn note_judged(&self, key: &ImageKey, image: &CatalogImage, verdict: &Verdict) {
        // Registries of judged images, for the early verification's port-less source labels.
        if let (Some(prefetch), Ok(reference)) =
            (&self.prefetch, ImageRef::parse(&image.resolved.record.name))
        {
            prefetch.saw_registry(&reference.registry);
        }
        tracing::info!(
            image = %key.name,
            namespace = %key.namespace,
            digest = %image.resolved.manifest_digest,
            outcome = ?verdict.outcome,
            scope = %verdict.scope,
            layers = image.layers.len(),
            "image judged"
        );
    }

    /// The trust every known container should have: its image's verdict (a container whose
    /// image has no trusted verdict, pending included, is untrusted). A container with no
    /// record yet (its snapshot is prepared before containerd creates it) has no entry, which
    /// the backends treat as untrusted too.
    fn desired_containers(&mut self) -> HashMap<LayerId, ContainerState> {
        let now = std::time::Instant::now();
        for (_, gone) in self.root_names.values_mut() {
            gone.get_or_insert(now);
        }
        self.root_names
            .retain(|_, (_, gone)| gone.is_none_or(|at| at.elapsed() < describe::RETAIN_DELETED));
        let desired = self
            .containers
            .live_records()
            .filter_map(|record| {
                let (root, _) = self
                    .writable
                    .get(&(record.namespace.clone(), record.snapshot_key.clone()))?;
                let image = ImageKey {
                    namespace: record.namespace.clone(),
                    name: record.image.clone(),
                };
                let images = self.image_ids.images_of(&self.table, &image);
                let trust = image_ids::container_trust(&images);
                // The image's policy scope may say what its containers run from outside it
                // (of several names of one image, a scope that denies wins).
                let outside_image = images
                    .iter()
                    .filter_map(|(key, _)| {
                        let reference = ImageRef::parse(&key.name).ok()?;
                        self.verifier.policy.rule_for(&reference).outside_image
                    })
                    .max_by_key(|outside| matches!(outside, crate::enforce::OutsideImage::Deny));
                let state = ContainerState {
                    trust,
                    outside_image,
                };
                Some((*root, state, (record.namespace.clone(), record.id.clone())))
            })
            .collect::<Vec<_>>();
        desired
            .into_iter()
            .map(|(root, trust, name)| {
                self.root_names.insert(root, (name, None));
                (root, trust)
            })
            .collect()
    }

    /// Makes the backend's container table the mirror of [`Self::desired_containers`].
    fn sync_containers(&mut self) -> Result<(), DaemonError> {
        if self.reconciling {
            return Ok(());
        }
        let desired = self.desired_containers();
        let name = self.backend.name();
        for (root, trust) in &desired {
            if self.container_trust.get(root) != Some(trust) {
                tracing::info!(%root, ?trust, "container judged by its image");
                self.backend
                    .set_container(*root, *trust)
                    .map_err(backend_error(name))?;
            }
        }
        for root in self.container_trust.keys() {
            if !desired.contains_key(root) {
                self.backend
                    .remove_container(*root)
                    .map_err(backend_error(name))?;
            }
        }
        self.container_trust = desired;
        Ok(())
    }

    /// Re-reads one image from containerd (after an event, or to retry it) and judges it again;
    /// forgets it if containerd no longer has it. A record that cannot be catalogued vouches
    /// for nothing until a retry succeeds ([`Self::not_catalogued`]); that is not an error of
    /// this call, which fails only when the backend does.
    pub async fn refresh_image(&mut self, namespace: &str, name: &str) -> Result<(), DaemonError> {
        let key = ImageKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        if image_ids::is_image_id(name) {
            return self.refresh_image_id(key).await;
        }
        let record = match self.containerd.image(namespace, name).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                self.uncatalogued.remove(&key);
                self.verifications.forget(&key);
                if let Some(dirty) = self.rebuild_dirty.as_mut() {
                    dirty.insert(key.clone());
                }
                self.verdicts.remove(&key);
                let changes = self.table.remove(&key);
                return self.apply(&changes);
            }
            Err(error) => return self.not_catalogued(key, &error.into()),
        };
        match catalog::catalogue(&self.containerd, &record).await {
            Ok(image) => {
                self.catalogued(&key);
                self.admit(image)
            }
            Err(error) => self.not_catalogued(key, &error),
        }
    }

    /// Re-reads an image-id record ([`image_ids`]): never judged, only the manifest it resolves
    /// to is noted, for the containers made from it. One that cannot be read is retried like
    /// any record; meanwhile its containers are untrusted.
    async fn refresh_image_id(&mut self, key: ImageKey) -> Result<(), DaemonError> {
        let resolved = match self.containerd.image(&key.namespace, &key.name).await {
            Ok(Some(record)) => self.containerd.resolve(&record).await.map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        };
        match resolved {
            Ok(Some(resolved)) => {
                self.catalogued(&key);
                self.image_ids.insert(key, Some(resolved.manifest_digest));
            }
            Ok(None) => {
                self.uncatalogued.remove(&key);
                self.image_ids.remove(&key);
            }
            Err(error) => {
                self.image_ids.insert(key.clone(), None);
                self.note_uncatalogued(key, &error.into());
            }
        }
        self.sync_containers()
    }

    /// A record could not be catalogued: it vouches for nothing from now on (its layers leave
    /// the table unless another trusted image holds them), is counted, logged, shown in
    /// `status`, and retried after [`retry_delay`].
    fn not_catalogued(
        &mut self,
        key: ImageKey,
        error: &catalog::CatalogError,
    ) -> Result<(), DaemonError> {
        self.verdicts.remove(&key);
        self.verifications.forget(&key);
        let changes = self.table.remove(&key);
        self.note_uncatalogued(key, error);
        self.apply(&changes)
    }

    /// Counts, logs and schedules the retry of a record that could not be catalogued.
    fn note_uncatalogued(&mut self, key: ImageKey, error: &catalog::CatalogError) {
        let message = crate::telemetry::error_chain(error);
        let attempts = self.uncatalogued.get(&key).map_or(0, |u| u.attempts) + 1;
        let delay = retry_delay(attempts);
        tracing::warn!(
            image = %key.name,
            namespace = %key.namespace,
            attempts,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %message,
            "image record not catalogued: it vouches for nothing until a retry succeeds"
        );
        crate::metrics::global().catalog_failure();
        self.note_error(
            &format!("image {} ({}) not catalogued", key.name, key.namespace),
            error,
        );
        self.uncatalogued.insert(
            key,
            Uncatalogued {
                attempts,
                next: tokio::time::Instant::now() + delay,
                error: message,
            },
        );
    }

    /// A record was catalogued: it no longer waits for a retry.
    fn catalogued(&mut self, key: &ImageKey) {
        if let Some(earlier) = self.uncatalogued.remove(key) {
            tracing::info!(image = %key.name, namespace = %key.namespace, failed_attempts = earlier.attempts, "image record catalogued after failed attempts");
        }
    }

    /// When the next record that could not be catalogued is due for a retry.
    #[must_use]
    pub fn next_retry(&self) -> Option<tokio::time::Instant> {
        self.uncatalogued
            .values()
            .map(|u| u.next)
            .chain(self.verifications.retries.values().map(|r| r.next))
            .min()
    }

    /// Retries every record whose retry is due.
    pub async fn retry_uncatalogued(&mut self) -> Result<(), DaemonError> {
        let now = tokio::time::Instant::now();
        let due: Vec<ImageKey> = self
            .uncatalogued
            .iter()
            .filter(|(_, u)| u.next <= now)
            .map(|(key, _)| key.clone())
            .chain(
                self.verifications
                    .retries
                    .iter()
                    .filter(|(key, r)| {
                        r.next <= now && !self.verifications.in_flight.contains_key(*key)
                    })
                    .map(|(key, _)| key.clone()),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for key in due {
            self.refresh_image(&key.namespace, &key.name).await?;
        }
        Ok(())
    }

    /// Image records judged, and image records known (judged or waiting for a retry).
    #[must_use]
    pub fn records(&self) -> (usize, usize) {
        let judged = self.verdicts.len();
        let pending = self
            .verifications
            .in_flight
            .keys()
            .filter(|key| {
                !self.verdicts.contains_key(*key) && !self.uncatalogued.contains_key(*key)
            })
            .count();
        (judged, judged + self.uncatalogued.len() + pending)
    }

    /// Records a container's writable layer (drift is judged against it).
    pub async fn track_active(&mut self, namespace: &str, key: &str) -> Result<(), DaemonError> {
        let Some(upper) = self.containerd.upper_dir(namespace, key).await? else {
            return Ok(());
        };
        let Ok(id) = LayerId::of(&upper) else {
            return Ok(());
        };
        self.apply_batch(&[(id, Some(LayerState::Writable))])?;
        self.layer_dirs.insert(id, upper.clone());
        self.writable
            .insert((namespace.to_owned(), key.to_owned()), (id, upper));
        Ok(())
    }

    /// Forgets a removed snapshot's writable layer.
    pub fn untrack_active(&mut self, namespace: &str, key: &str) -> Result<(), DaemonError> {
        if let Some((id, _)) = self
            .writable
            .remove(&(namespace.to_owned(), key.to_owned()))
        {
            self.apply_batch(&[(id, None)])?;
            self.sync_containers()?;
        }
        Ok(())
    }

    /// A committed snapshot (a layer, named by its chainID) was removed: the images that listed
    /// it are catalogued again, so their entries stop vouching for a directory that is gone.
    /// (Keys carry inode generations, so a new directory could not match the old entry anyway;
    /// this keeps the table exact.)
    async fn forget_removed_layer(&mut self, namespace: &str, chain_id: &str) {
        let listing: Vec<ImageKey> = self
            .table
            .images()
            .filter(|(key, entry)| {
                key.namespace == namespace
                    && entry.layers.iter().any(|(chain, _)| chain == chain_id)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in listing {
            tracing::info!(image = %key.name, namespace = %key.namespace, chain_id, "a layer of this image was removed; cataloguing it again");
            if let Err(error) = self.refresh_image(&key.namespace, &key.name).await {
                self.note_error(&format!("cataloguing {} again", key.name), &error);
            }
        }
    }

    /// Before a reconciliation's verifications (which may wait on registries): the backend
    /// stops holding verified or audit layers that no image containerd lists now contains and
    /// the current table does not want (an image deleted while the daemon was down, its
    /// entries kept by pinned maps). What is still listed waits for the swap, judged.
    fn purge_unlisted_layers(&mut self, images: &[CatalogImage]) -> Result<(), DaemonError> {
        let listed: HashSet<LayerId> = images
            .iter()
            .flat_map(|image| image.layers.iter().map(|layer| layer.id))
            .chain(self.table.desired().into_keys())
            .collect();
        let name = self.backend.name();
        let held = self.backend.layers().map_err(backend_error(name))?;
        let batch: Vec<(LayerId, Option<LayerState>)> = held
            .into_iter()
            .filter(|(layer, state)| {
                matches!(state, LayerState::Verified | LayerState::Audit) && !listed.contains(layer)
            })
            .map(|(layer, state)| {
                tracing::info!(%layer, ?state, "removing before the reconciliation a layer no listed image contains");
                (layer, None)
            })
            .collect();
        self.apply_batch(&batch)
    }

    /// Everything containerd has, judged; the backend's table made the exact mirror of ours:
    /// anything the backend holds that the new table does not (a layer of an image deleted while
    /// the daemon was down, kept alive by pinned BPF maps) is removed. The new table is computed
    /// aside and swapped in at once; if any step fails the old table stays.
    pub async fn reconcile(&mut self) -> Result<(), DaemonError> {
        let rebuild = self.begin_rebuild().await?;
        let rebuilt = self.verify_rebuild(rebuild).await;
        self.finish_rebuild(rebuilt).await
    }

    /// A reconciliation's first step, in the event loop (containerd only, no registry): every
    /// record catalogued. Events handled until [`Self::finish_rebuild`] are applied to the
    /// current table and their images judged again after the swap.
    pub async fn begin_rebuild(&mut self) -> Result<Rebuild, DaemonError> {
        self.start_content_watch();
        // Until a first table is swapped in, containers keep the trust the backend holds: a
        // trusted container must not be denied because its image is judged late.
        self.reconciling = !self.built;
        let started = std::time::Instant::now();
        let result = async {
            let namespaces = self.containerd.namespaces().await?;
            for namespace in &namespaces {
                self.remove_leftover_views(namespace).await;
            }
            let listed = catalog::reconcile(&self.containerd, &namespaces).await?;
            Ok::<_, DaemonError>((namespaces, listed))
        }
        .await;
        let (namespaces, listed) = match result {
            Ok(done) => done,
            Err(error) => {
                self.reconciling = false;
                return Err(error);
            }
        };
        self.rebuild_dirty = Some(HashSet::new());
        let total = listed.len();
        let mut images = Vec::new();
        let mut ids = HashMap::new();
        let mut failed = Vec::new();
        for (record, result) in listed {
            let key = ImageKey {
                namespace: record.namespace,
                name: record.name,
            };
            if image_ids::is_image_id(&key.name) {
                ids.insert(
                    key.clone(),
                    result
                        .as_ref()
                        .ok()
                        .map(|image| image.resolved.manifest_digest.clone()),
                );
            }
            match result {
                Ok(image) if image_ids::is_image_id(&key.name) => drop(image),
                Ok(image) => images.push(image),
                Err(error) => failed.push((key, error)),
            }
        }
        if let Err(error) = self.purge_unlisted_layers(&images) {
            // The swap removes them too; until then they keep what the pins said.
            tracing::warn!(error = %crate::telemetry::error_chain(&error), "removing unlisted layers before the reconciliation failed");
        }
        Ok(Rebuild {
            namespaces,
            total,
            images,
            image_ids: ids,
            failed,
            started,
            catalogued: started.elapsed(),
        })
    }

    /// A reconciliation's second step, off the event loop: the verdicts of every catalogued
    /// image (cached, or from the registry), each within the verification deadline and the
    /// concurrency limits.
    pub fn verify_rebuild(
        &self,
        rebuild: Rebuild,
    ) -> impl std::future::Future<Output = Rebuilt> + Send + 'static {
        let verifier = self.verifier.clone();
        let slots = Arc::clone(&self.verifications.slots);
        async move {
            let mut rebuild = rebuild;
            let images = std::mem::take(&mut rebuild.images);
            let mut tasks = tokio::task::JoinSet::new();
            let mut slots_of = Vec::with_capacity(images.len());
            for (index, image) in images.into_iter().enumerate() {
                let verifier = verifier.clone();
                let slots = Arc::clone(&slots);
                slots_of.push(image.clone());
                tasks.spawn(async move {
                    let (verdict, retry) = slots.verify(&verifier, &image).await;
                    (index, verdict, retry)
                });
            }
            let mut verdicts: Vec<Option<(Verdict, bool)>> = vec![None; slots_of.len()];
            // Every verdict in within one deadline (plus a margin for the last to finish): a
            // registry's long queue cannot hold the swap. The rest are `error`, retried.
            let all_in = tokio::time::Instant::now()
                + slots.limits().deadline
                + std::time::Duration::from_secs(1);
            loop {
                match tokio::time::timeout_at(all_in, tasks.join_next()).await {
                    Ok(Some(Ok((index, verdict, retry)))) => {
                        verdicts[index] = Some((verdict, retry));
                    }
                    Ok(Some(Err(error))) => {
                        tracing::error!(%error, "verification task failed; its image vouches for nothing");
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(
                            unfinished = tasks.len(),
                            "verifications still waiting at the reconciliation's deadline: error verdicts, retried"
                        );
                        tasks.abort_all();
                        break;
                    }
                }
            }
            let judged = slots_of
                .into_iter()
                .zip(verdicts)
                .map(|(image, verdict)| {
                    let (verdict, retry) = verdict.unwrap_or_else(|| {
                        (
                            verifying::unverified(
                                &verifier,
                                &image,
                                "its verification did not finish with the reconciliation",
                            ),
                            true,
                        )
                    });
                    (image, verdict, retry)
                })
                .collect();
            Rebuilt {
                rebuild,
                judged,
                policy_hash: verifier.policy.hash.clone(),
            }
        }
    }

    /// A reconciliation's last step, in the event loop: reads containerd's writable layers and
    /// containers, builds the new table aside, and swaps it in (layers in one batch, then
    /// containers). A failure before the swap keeps the old table whole; the images events
    /// touched meanwhile are judged again after it.
    pub async fn finish_rebuild(&mut self, rebuilt: Rebuilt) -> Result<(), DaemonError> {
        let result = self.swap_in(rebuilt).await;
        self.reconciling = false;
        let dirty = self.rebuild_dirty.take().unwrap_or_default();
        result?;
        // The new table is in: a failure from here on is one image's, not the swap's.
        for key in dirty {
            if let Err(error) = self.refresh_image(&key.namespace, &key.name).await {
                self.note_error(
                    &format!("judging {} again after the swap", key.name),
                    &error,
                );
                tracing::warn!(image = %key.name, namespace = %key.namespace, error = %crate::telemetry::error_chain(&error), "judging an image again after the swap failed");
            }
        }
        Ok(())
    }

    async fn swap_in(&mut self, rebuilt: Rebuilt) -> Result<(), DaemonError> {
        let Rebuilt {
            rebuild,
            judged,
            policy_hash,
        } = rebuilt;
        if policy_hash != self.verifier.policy.hash {
            return Err(DaemonError::Stale);
        }
        // containerd first: if it fails, nothing has changed yet.
        let mut writable = HashMap::new();
        let mut containers = Vec::new();
        for namespace in &rebuild.namespaces {
            for key in self.containerd.active_snapshots(namespace).await? {
                let Some(upper) = self.containerd.upper_dir(namespace, &key).await? else {
                    continue;
                };
                if let Ok(id) = LayerId::of(&upper) {
                    writable.insert((namespace.clone(), key), (id, upper));
                }
            }
            containers.extend(self.containerd.containers(namespace).await?);
        }
        let name = self.backend.name();
        let held = self.backend.layers().map_err(backend_error(name))?;

        // The new table, aside.
        let mut table = LayerTable::default();
        let mut verdicts = HashMap::new();
        let mut layer_dirs = HashMap::new();
        let mut retries = Vec::new();
        for (image, verdict, retry) in judged {
            let key = ImageKey {
                namespace: image.resolved.record.namespace.clone(),
                name: image.resolved.record.name.clone(),
            };
            if retry {
                retries.push(key.clone());
            }
            for layer in &image.layers {
                layer_dirs.insert(layer.id, layer.dir.clone());
            }
            self.note_judged(&key, &image, &verdict);
            table.upsert(key.clone(), entry_of(&image, &verdict));
            verdicts.insert(key, verdict);
        }
        for ((_, _), (id, dir)) in &writable {
            layer_dirs.insert(*id, dir.clone());
        }

        // One batch: what the new table wants that the backend does not hold, and what the
        // backend holds that nothing vouches for now.
        let desired = table.desired();
        let writable_ids: HashSet<LayerId> = writable.values().map(|(id, _)| *id).collect();
        let mut batch: Vec<(LayerId, Option<LayerState>)> = Vec::new();
        let held_map: HashMap<LayerId, LayerState> = held.iter().copied().collect();
        for (layer, state) in &held {
            if !desired.contains_key(layer) && !writable_ids.contains(layer) {
                tracing::info!(%layer, ?state, "removing a layer the backend held that nothing vouches for now");
                batch.push((*layer, None));
            }
        }
        for (layer, state) in &desired {
            let state = match state {
                table::Desired::Verified => LayerState::Verified,
                table::Desired::Audit => LayerState::Audit,
            };
            if held_map.get(layer) != Some(&state) {
                batch.push((*layer, Some(state)));
            }
        }
        for id in &writable_ids {
            if !desired.contains_key(id) && held_map.get(id) != Some(&LayerState::Writable) {
                batch.push((*id, Some(LayerState::Writable)));
            }
        }
        // Revocations first: a layer the new policy rejects is gone before anything is added.
        batch.sort_by_key(|(_, state)| state.is_some());
        self.apply_batch(&batch)?;

        // Swapped.
        self.table = table;
        self.verdicts = verdicts;
        self.layer_dirs = layer_dirs;
        self.writable = writable;
        self.image_ids.replace(rebuild.image_ids);
        self.built = true;
        let mut earlier = std::mem::take(&mut self.uncatalogued);
        for (key, error) in rebuild.failed {
            if let Some(before) = earlier.remove(&key) {
                self.uncatalogued.insert(key.clone(), before);
            }
            self.note_uncatalogued(key, &error);
        }
        for key in retries {
            self.verifications.schedule_retry(key);
        }
        let (judged, _) = self.records();
        tracing::info!(
            judged,
            records = rebuild.total,
            uncatalogued = self.uncatalogued.len(),
            catalog_ms = rebuild.catalogued.as_millis() as u64,
            judged_ms = rebuild.started.elapsed().as_millis() as u64,
            "images reconciled"
        );
        self.containers.replace_live(containers);
        // Tasks already running when the daemon started, or created while the stream was down.
        // Only names containers in events: a failure costs precision, not the reconcile.
        for namespace in &rebuild.namespaces {
            match self.containerd.task_pids(namespace).await {
                Ok(tasks) => {
                    for (container, pid) in tasks {
                        self.note_task_cgroup(namespace, &container, pid);
                    }
                }
                Err(error) => {
                    tracing::warn!(namespace = %namespace, error = %crate::telemetry::error_chain(&error), "listing tasks failed");
                }
            }
        }
        // Containers: the backend's table (pinned BPF maps outlive the daemon) becomes the
        // exact mirror; anything it held that is not a live container now is removed.
        self.reconciling = false;
        self.container_trust = self
            .backend
            .containers()
            .map_err(backend_error(name))?
            .into_iter()
            .collect();
        self.sync_containers()
    }

    /// Removes view snapshots and expired view leases an earlier process left in `namespace`
    /// (see [`catalog::Containerd::remove_leftover_views`]). A failure costs only tidiness,
    /// never a record: the next reconciliation tries again.
    async fn remove_leftover_views(&self, namespace: &str) {
        match self.containerd.remove_leftover_views(namespace).await {
            Ok((0, 0)) => {}
            Ok((views, leases)) => {
                tracing::info!(
                    namespace,
                    views,
                    leases,
                    "removed view snapshots and expired leases an earlier run left"
                );
            }
            Err(error) => {
                tracing::warn!(namespace, error = %crate::telemetry::error_chain(&error), "could not remove leftover view snapshots");
            }
        }
    }

    /// Re-locates images whose layers were not unpacked yet (after a snapshot commit).
    pub async fn refresh_unpacked(&mut self) -> Result<(), DaemonError> {
        // Judged images without layers, and those still being verified (their verdict is
        // recorded with the layers located meanwhile).
        let pending: Vec<ImageKey> = self
            .table
            .images()
            .filter(|(_, entry)| entry.layers.is_empty())
            .map(|(key, _)| key.clone())
            .chain(
                self.verifications
                    .in_flight
                    .iter()
                    .filter(|(_, running)| !running.unpacked)
                    .map(|(key, _)| key.clone()),
            )
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for key in pending {
            self.refresh_image(&key.namespace, &key.name).await?;
        }
        Ok(())
    }

    /// Handles one containerd event.
    pub async fn handle_event(
        &mut self,
        envelope: &containerd_client::types::Envelope,
    ) -> Result<(), DaemonError> {
        use containerd_client::events;
        use prost::Message as _;
        self.start_content_watch();
        let Some(any) = &envelope.event else {
            return Ok(());
        };
        let namespace = envelope.namespace.as_str();
        match envelope.topic.as_str() {
            "/images/create" | "/images/update" => {
                let name = if envelope.topic == "/images/create" {
                    containerd_client::services::v1::ImageCreate::decode(any.value.as_slice())
                        .map(|e| e.name)
                } else {
                    containerd_client::services::v1::ImageUpdate::decode(any.value.as_slice())
                        .map(|e| e.name)
                };
                if let Ok(name) = name {
                    self.refresh_image(namespace, &name).await?;
                }
            }
            "/images/delete" => {
                if let Ok(event) =
                    containerd_client::services::v1::ImageDelete::decode(any.value.as_slice())
                {
                    self.refresh_image(namespace, &event.name).await?;
                }
            }
            "/snapshot/commit" => {
                // Unpacking prepares each layer as an active snapshot (on overlayfs, with an
                // upper dir once it has a parent) and commits it in place: the committed layer
                // is the same directory, so it must stop counting as a writable layer (else an
                // exec from it is reported as drift) before the image's layers are re-located.
                if let Ok(event) = events::SnapshotCommit::decode(any.value.as_slice()) {
                    self.untrack_active(namespace, &event.key)?;
                }
                self.refresh_unpacked().await?;
            }
            "/snapshot/prepare" => {
                if let Ok(event) = events::SnapshotPrepare::decode(any.value.as_slice()) {
                    if event.snapshotter.is_empty()
                        || event.snapshotter == catalog::containerd::SNAPSHOTTER
                    {
                        self.track_active(namespace, &event.key).await?;
                        self.sync_containers()?;
                    }
                }
            }
            "/containers/create" | "/containers/update" => {
                let id = if envelope.topic == "/containers/create" {
                    events::ContainerCreate::decode(any.value.as_slice()).map(|e| e.id)
                } else {
                    events::ContainerUpdate::decode(any.value.as_slice()).map(|e| e.id)
                };
                if let Ok(id) = id {
                    if let Some(record) = self.containerd.container(namespace, &id).await? {
                        self.containers.insert(record);
                        self.sync_containers()?;
                    }
                }
            }
            "/tasks/create" => {
                // The task's init process exists (runc waits for start) and sits in the
                // container's cgroup: note it, so decisions name the container after it exits.
                if let Ok(event) = events::TaskCreate::decode(any.value.as_slice()) {
                    self.note_task_cgroup(namespace, &event.container_id, event.pid);
                }
            }
            "/containers/delete" => {
                if let Ok(event) = events::ContainerDelete::decode(any.value.as_slice()) {
                    self.containers.delete(namespace, &event.id);
                    self.sync_containers()?;
                }
            }
            "/snapshot/remove" => {
                if let Ok(event) = events::SnapshotRemove::decode(any.value.as_slice()) {
                    self.untrack_active(namespace, &event.key)?;
                    self.forget_removed_layer(namespace, &event.key).await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Notes the cgroup of a container's task process, if it can be read.
    fn note_task_cgroup(&mut self, namespace: &str, container: &str, pid: u32) {
        if let Some(cgroup) = crate::enforce::cgroup::id_of_process(pid) {
            self.containers.note_cgroup(namespace, container, cgroup);
        }
    }

    /// A decision event with the images and container it concerns and the file's path as the
    /// process saw it, as one JSON object (see [`describe`]).
    pub fn describe(&mut self, decision: &Decision) -> serde_json::Value {
        let owners: Vec<LayerOwner> = decision
            .layer
            .map(|layer| self.table.owners(layer))
            .unwrap_or_default();
        // The path the backend read from the open file when it decided: the kernel prints a
        // path outside this mount namespace (a container's) as the process saw it, and one
        // through the layer directory as a host path, cut here to the layer. Else (BPF) a walk
        // of the layer directory, which a denied container's writable layer may have left.
        let path = decision.layer.and_then(|layer| {
            let dir = self.layer_dirs.get(&layer)?;
            match decision.real_path.as_deref() {
                Some(real) => Some(
                    real.strip_prefix(dir)
                        .map_or_else(|_| real.to_path_buf(), |inside| Path::new("/").join(inside)),
                ),
                None => self.paths.path_in(layer, dir, decision.file),
            }
        });
        let writable = decision.layer.and_then(|layer| {
            self.writable
                .iter()
                .find(|(_, (id, _))| *id == layer)
                .map(|((namespace, key), _)| (namespace.clone(), key.clone()))
        });
        let by_root = decision.container_root.and_then(|root| {
            let ((namespace, id), _) = self.root_names.get(&root)?;
            self.containers.get(namespace, id).map(|record| {
                let mut value = container_json(record);
                let image = ImageKey {
                    namespace: record.namespace.clone(),
                    name: record.image.clone(),
                };
                let images = self.image_ids.images_of(&self.table, &image);
                if let Some((_, entry)) = images.first() {
                    value["digest"] = serde_json::Value::String(entry.manifest_digest.clone());
                    value["trusted"] = serde_json::Value::Bool(
                        image_ids::container_trust(&images) == ContainerTrust::Trusted,
                    );
                }
                if image_ids::is_image_id(&record.image) {
                    // Made from an image id: the names it was judged by.
                    value["image_names"] = images.iter().map(|(key, _)| key.name.clone()).collect();
                }
                value
            })
        });
        let container = match &writable {
            Some((namespace, key)) => {
                Some(self.containers.by_snapshot(namespace, key).map_or_else(
                    || serde_json::json!({"namespace": namespace, "id": key}),
                    container_json,
                ))
            }
            None => decision
                .cgroup_id
                .and_then(|cgroup| self.containers.by_cgroup(cgroup))
                .or_else(|| {
                    let images: Vec<(String, String)> = owners
                        .iter()
                        .map(|o| (o.image.namespace.clone(), o.image.name.clone()))
                        .collect();
                    let candidates = self.containers.from_images(&images);
                    describe::pick_container(&candidates, decision.tgid)
                })
                .map(container_json),
        };
        let mut value = serde_json::to_value(decision).unwrap_or_default();
        value["path"] = path.map_or(serde_json::Value::Null, |p| {
            serde_json::Value::String(p.to_string_lossy().into_owned())
        });
        value["images"] = serde_json::to_value(&owners).unwrap_or_default();
        value["container"] = by_root.or(container).unwrap_or(serde_json::Value::Null);
        value
    }

    /// The decisions to describe now, in order: `new` ones and those held earlier. A decision
    /// from a container the daemon does not know yet is held up to [`EVENT_HOLD`]: its process
    /// can run before containerd's event for the container reaches the daemon (a CRI sandbox's
    /// pause process starts within milliseconds of its record, while the daemon may still be
    /// judging the image just pulled), and its event should name the container and pod.
    /// `flush` describes everything (the daemon is stopping).
    pub fn ready_decisions(&mut self, new: Vec<Decision>, flush: bool) -> Vec<Decision> {
        let now = std::time::Instant::now();
        self.held
            .extend(new.into_iter().map(|decision| (decision, now)));
        let (ready, held): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held)
                .into_iter()
                .partition(|(decision, since)| {
                    flush
                        || since.elapsed() >= EVENT_HOLD
                        || decision
                            .container_root
                            .is_none_or(|root| self.root_names.contains_key(&root))
                });
        self.held = held;
        ready.into_iter().map(|(decision, _)| decision).collect()
    }

    /// Remembers an error for `status` (the last [`LAST_ERRORS`]).
    pub fn note_error(&mut self, what: &str, error: &dyn std::error::Error) {
        if self.errors.len() >= LAST_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back((
            std::time::SystemTime::now(),
            format!("{what}: {}", crate::telemetry::error_chain(error)),
        ));
    }

    /// Status for `imagegate status`.
    #[must_use]
    pub fn status(&self) -> serde_json::Value {
        let (trusted, untrusted) = self.table.counts();
        let (judged, total) = self.records();
        let now = tokio::time::Instant::now();
        let mut uncatalogued: Vec<(&ImageKey, &Uncatalogued)> = self.uncatalogued.iter().collect();
        uncatalogued.sort_by(|a, b| {
            a.0.namespace
                .cmp(&b.0.namespace)
                .then(a.0.name.cmp(&b.0.name))
        });
        let (mode, drift) = self
            .settings
            .map_or((None, None), |(m, d)| (Some(m), Some(d)));
        serde_json::json!({
            "backend": self.backend.name(),
            // Ready but degraded while the backend's layer table is full.
            "degraded": (!self.refused.is_empty()).then(|| serde_json::json!({
                "layer_table_full": true,
                "refused_layers": self.refused.len(),
            })),
            "mode": mode,
            "drift": drift,
            "last_errors": self.errors.iter().map(|(at, message)| serde_json::json!({
                "time": at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "error": message,
            })).collect::<Vec<_>>(),
            "images": {"trusted": trusted, "untrusted": untrusted},
            // The public-good trusted root kept current through TUF, when the daemon runs the client.
            "public_good_root": crate::tuf::installed().map(|tuf| tuf.status()),
            "records": {
                "judged": judged,
                "total": total,
                // CRI's `sha256:<id>` records: never judged, not counted above.
                "image_ids": self.image_ids.len(),
                "uncatalogued": uncatalogued.iter().take(STATUS_UNCATALOGUED).map(|(key, u)| serde_json::json!({
                    "namespace": key.namespace, "image": key.name, "attempts": u.attempts,
                    "error": u.error,
                    "retry_in_seconds": u.next.saturating_duration_since(now).as_secs_f64(),
                })).collect::<Vec<_>>(),
            },
            "layers": {"verified_or_audit": self.table.desired().len(), "writable": self.writable.len()},
            "containers": self.containers.live(),
            "container_verdicts": self.containers.live_records().filter_map(|record| {
                let (root, _) = self.writable.get(&(record.namespace.clone(), record.snapshot_key.clone()))?;
                Some(serde_json::json!({
                    "namespace": record.namespace, "id": record.id, "image": record.image,
                    "trust": self.container_trust.get(root).map(|state| state.trust),
                    "outside_image": self.container_trust.get(root).and_then(|state| state.outside_image),
                }))
            }).collect::<Vec<_>>(),
            "events": self.events_seen,
            "verdicts": self.verdicts.iter().map(|(key, verdict)| serde_json::json!({
                "namespace": key.namespace, "image": key.name, "digest": verdict.digest,
                "outcome": verdict.outcome, "scope": verdict.scope,
                // What vouched: the digests whose signatures were accepted (the manifest, or
                // its index), and each accepted signature with its authority and signer.
                "signed_digests": verdict.verified_digests,
                "signatures": verdict.reasons.iter().filter(|r| r.accepted).map(|r| serde_json::json!({
                    "signature": r.signature, "authority": r.authority, "signer": r.signer,
                    "evidence": r.evidence,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            // Verifications running (their images are not trusted until they end).
            "pending": self.pending().iter().map(|(key, digest)| serde_json::json!({
                "namespace": key.namespace, "image": key.name, "digest": digest,
            })).collect::<Vec<_>>(),
            "verification_retries": self.verifications.retries.iter().map(|(key, retry)| serde_json::json!({
                "namespace": key.namespace, "image": key.name, "attempts": retry.attempts,
                "retry_in_seconds": retry.next.saturating_duration_since(now).as_secs_f64(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// An image's table entry under its verdict.
fn entry_of(image: &CatalogImage, verdict: &Verdict) -> ImageEntry {
    ImageEntry {
        manifest_digest: image.resolved.manifest_digest.clone(),
        trusted: verdict.outcome == crate::verdict::Outcome::Trusted,
        audit: verdict.mode == crate::policy::Mode::Audit,
        layers: image
            .layers
            .iter()
            .map(|layer| (layer.chain_id.clone(), layer.id))
            .collect(),
    }
}

fn container_json(record: &catalog::ContainerRecord) -> serde_json::Value {
    let mut value =
        serde_json::json!({"namespace": record.namespace, "id": record.id, "image": record.image});
    // A CRI container: the pod and container names kubelet gave it.
    if let Some(kubernetes) = &record.kubernetes {
        value["pod"] = serde_json::json!(kubernetes.pod);
        value["pod_namespace"] = serde_json::json!(kubernetes.namespace);
        value["name"] = serde_json::json!(kubernetes.container);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_by_doubling_up_to_a_bound() {
        let delays: Vec<u128> = (1..=12).map(|n| retry_delay(n).as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 300000, 300000]
        );
        assert_eq!(retry_delay(0), RETRY_FIRST);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
