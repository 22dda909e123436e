//! containerd's gRPC API, as the catalog needs it: namespaces, image records, content blobs
//! (bounded), and the overlayfs snapshot directories of a chain of layers.

use std::path::{Path, PathBuf};

use containerd_client::{
    services::v1::{
        snapshots::{
            ListSnapshotsRequest, MountsRequest, RemoveSnapshotRequest, StatSnapshotRequest,
            ViewSnapshotRequest,
        },
        CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
        GetContainerRequest, GetImageRequest, InfoRequest, ListContainersRequest,
        ListImagesRequest, ListNamespacesRequest, ListRequest as ListLeasesRequest,
        ListTasksRequest, ReadContentRequest, SubscribeRequest,
    },
    tonic::{metadata::MetadataValue, Request},
    Client,
};

use crate::oci::{self, Document, OciError};

/// The snapshotter whose directories imagegate judges.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Why talking to containerd failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("connecting to containerd at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
    #[error("containerd {call} failed")]
    Call {
        call: &'static str,
        #[source]
        source: containerd_client::tonic::Status,
    },
    #[error("namespace name {namespace:?} is not a valid gRPC header value")]
    BadNamespace { namespace: String },
    #[error("{value:?} is not a valid gRPC header value")]
    BadHeader { value: String },
    #[error("image {name} has no target descriptor")]
    NoTarget { name: String },
    #[error("blob {digest} is {size} bytes, over the {limit}-byte limit")]
    BlobTooLarge {
        digest: String,
        size: i64,
        limit: usize,
    },
    #[error("image {name}")]
    Document {
        name: String,
        #[source]
        source: OciError,
    },
    #[error("unexpected mounts for a view of {chain_id}: {detail}")]
    Mounts { chain_id: String, detail: String },
}

/// An image record: its name and what it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// containerd namespace.
    pub namespace: String,
    /// Full reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// The target's media type (manifest or index).
    pub media_type: String,
    /// The target digest.
    pub digest: String,
}

/// What an image is made of, for this host's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The record it came from.
    pub record: ImageRecord,
    /// The index digest, when the record points to an index.
    pub index_digest: Option<String>,
    /// The platform manifest actually unpacked.
    pub manifest_digest: String,
    /// The image config.
    pub config_digest: String,
    /// Layer chainIDs, bottom first (containerd's committed snapshot names).
    pub chain_ids: Vec<String>,
}

/// A connection to containerd.
#[derive(Clone)]
pub struct Containerd {
    client: std::sync::Arc<Client>,
}

fn call(name: &'static str) -> impl Fn(containerd_client::tonic::Status) -> ContainerdError {
    move |source| ContainerdError::Call { call: name, source }
}

/// A get-style call's answer, with containerd's NotFound as `None` (the object is gone: not an
/// error for a daemon following events).
fn found<T>(
    call: &'static str,
    response: Result<containerd_client::tonic::Response<T>, containerd_client::tonic::Status>,
) -> Result<Option<T>, ContainerdError> {
    match response {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == containerd_client::tonic::Code::NotFound => Ok(None),
        Err(source) => Err(ContainerdError::Call { call, source }),
    }
}

fn request<T>(namespace: &str, message: T) -> Result<Request<T>, ContainerdError> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = namespace
        .parse()
        .map_err(|_| ContainerdError::BadNamespace {
            namespace: namespace.to_owned(),
        })?;
    request.metadata_mut().insert("containerd-namespace", value);
    Ok(request)
}

impl Containerd {
    /// Connects to containerd's socket.
    pub async fn connect(socket: &Path) -> Result<Self, ContainerdError> {
        let client =
            Client::from_path(socket)
                .await
                .map_err(|source| ContainerdError::Connect {
                    socket: socket.to_owned(),
                    source,
                })?;
        Ok(Self {
            client: std::sync::Arc::new(client),
        })
    }

    /// Every namespace (`default`, `k8s.io`, `moby`, ...).
    pub async fn namespaces(&self) -> Result<Vec<String>, ContainerdError> {
        let response = self
            .client
            .namespaces()
            .list(ListNamespacesRequest::default())
            .await
            .map_err(call("namespaces.list"))?;
        Ok(response
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// Every image record in `namespace`.
    pub async fn images(&self, namespace: &str) -> Result<Vec<ImageRecord>, ContainerdError> {
        let response = self
            .client
            .images()
            .list(request(namespace, ListImagesRequest::default())?)
            .await
            .map_err(call("images.list"))?;
        response
            .into_inner()
            .images
            .into_iter()
            .map(|image| record(namespace, image))
            .collect()
    }

    /// One image record, `None` if it does not exist (any more).
    pub async fn image(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ImageRecord>, ContainerdError> {
        let response = self
            .client
            .images()
            .get(request(
                namespace,
                GetImageRequest {
                    name: name.to_owned(),
                },
            )?)
            .await;
        found("images.get", response)?
            .and_then(|response| response.image)
            .map(|image| record(namespace, image))
            .transpose()
    }

    /// Reads a content blob, refusing anything over `limit` bytes, and checks its digest.
    pub async fn read_blob(
        &self,
        namespace: &str,
        digest: &str,
        limit: usize,
    ) -> Result<Vec<u8>, ContainerdError> {
        let info = self
            .client
            .content()
            .info(request(
                namespace,
                InfoRequest {
                    digest: digest.to_owned(),
                },
            )?)
            .await
            .map_err(call("content.info"))?
            .into_inner()
            .info
            .map_or(0, |info| info.size);
        if usize::try_from(info).map_or(true, |size| size > limit) {
            return Err(ContainerdError::BlobTooLarge {
                digest: digest.to_owned(),
                size: info,
                limit,
            });
        }
        let mut stream = self
            .client
            .content()
            .read(request(
                namespace,
                ReadContentRequest {
                    digest: digest.to_owned(),
                    offset: 0,
                    size: 0,
                },
            )?)
            .await
            .map_err(call("content.read"))?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(call("content.read"))? {
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() > limit {
                return Err(ContainerdError::BlobTooLarge {
                    digest: digest.to_owned(),
                    size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
                    limit,
                });
            }
        }
        oci::verify_digest(digest, &bytes).map_err(|source| ContainerdError::Document {
            name: digest.to_owned(),
            source,
        })?;
        Ok(bytes)
    }

    /// Where a blob was pulled from, as `host/repository` names: containerd labels fetched
    /// content `containerd.io/distribution.source.<host>=<repo>[,<repo>...]` (the registry's
    /// host name without its port). Empty when
    /// `namespace` does not hold the blob (yet).
    pub async fn distribution_sources(
        &self,
        namespace: &str,
        digest: &str,
    ) -> Result<Vec<String>, ContainerdError> {
        const PREFIX: &str = "containerd.io/distribution.source.";
        let response = self
            .client
            .content()
            .info(request(
                namespace,
                InfoRequest {
                    digest: digest.to_owned(),
                },
            )?)
            .await;
        let info = found("content.info", response)?.and_then(|response| response.info);
        Ok(info
            .map(|info| {
                info.labels
                    .iter()
                    .filter_map(|(key, value)| Some((key.strip_prefix(PREFIX)?, value)))
                    .flat_map(|(registry, repos)| {
                        repos
                            .split(',')
                            .filter(|repo| !repo.is_empty())
                            .map(move |repo| format!("{registry}/{repo}"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Follows an image record to its platform manifest, config and chainIDs.
    pub async fn resolve(&self, record: &ImageRecord) -> Result<ResolvedImage, ContainerdError> {
        let doc_error = |source| ContainerdError::Document {
            name: record.name.clone(),
            source,
        };
        let limit = oci::MAX_DOCUMENT_BYTES;
        let top = self
            .read_blob(&record.namespace, &record.digest, limit)
            .await?;
        let (index_digest, manifest_digest, manifest) =
            match oci::parse_document(&record.digest, &record.media_type, &top)
                .map_err(doc_error)?
            {
                Document::Index(index) => {
                    let chosen =
                        oci::select_platform(&record.digest, &index, &oci::host_platform())
                            .map_err(doc_error)?;
                    let chosen_digest = chosen.digest().to_string();
                    let bytes = self
                        .read_blob(&record.namespace, &chosen_digest, limit)
                        .await?;
                    let manifest =
                        oci::parse_manifest(&chosen_digest, chosen.media_type().as_ref(), &bytes)
                            .map_err(doc_error)?;
                    (Some(record.digest.clone()), chosen_digest, manifest)
                }
                Document::Manifest(manifest) => (None, record.digest.clone(), manifest),
            };
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self
            .read_blob(&record.namespace, &config_digest, limit)
            .await?;
        let diff_ids =
            oci::parse_config_diff_ids(&config_digest, &config_bytes).map_err(doc_error)?;
        let layers = manifest.layers().len();
        if diff_ids.len() != layers {
            return Err(doc_error(OciError::LayerCountMismatch {
                layers,
                diff_ids: diff_ids.len(),
            }));
        }
        Ok(ResolvedImage {
            record: record.clone(),
            index_digest,
            manifest_digest,
            config_digest,
            chain_ids: oci::chain_ids(&diff_ids),
        })
    }

    /// A lease for temporary views in `namespace` (see [`Containerd::snapshot_dirs`]): while it
    /// holds a view, containerd's garbage collector cannot take it or race its removal. It
    /// expires by itself ([`VIEW_LEASE_LIFETIME`], its `containerd.io/gc.expire` label), so
    /// one a killed process leaves protects nothing for long; [`Containerd::release`] deletes
    /// it at once.
    pub async fn view_lease(&self, namespace: &str) -> Result<ViewLease, ContainerdError> {
        let id = view_keys().next();
        let expires = std::time::SystemTime::now() + VIEW_LEASE_LIFETIME;
        let expires = expires
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.client
            .leases()
            .create(request(
                namespace,
                CreateLeaseRequest {
                    id: id.clone(),
                    labels: [(
                        GC_EXPIRE_LABEL.to_owned(),
                        crate::verify::time::format_rfc3339(expires),
                    )]
                    .into(),
                },
            )?)
            .await
            .map_err(call("leases.create"))?;
        Ok(ViewLease {
            namespace: namespace.to_owned(),
            id,
        })
    }

    /// Deletes a view lease (what it held is collected later; its views are removed already).
    /// A failure is only logged: the lease expires, and the next sweep deletes it.
    pub async fn release(&self, lease: &ViewLease) {
        if let Err(error) = self.delete_lease(&lease.namespace, &lease.id).await {
            tracing::warn!(lease = %lease.id, namespace = %lease.namespace, error = %crate::telemetry::error_chain(&error), "could not delete a view lease");
        }
    }

    /// The `snapshots/<id>/fs` directories of the committed snapshot `chain_id` and its parents,
    /// bottom first, in the lease's namespace; `None` when containerd has no such snapshot (the
    /// image is not unpacked).
    ///
    /// The overlayfs snapshotter does not expose its ids directly; a short-lived view of the
    /// snapshot returns mounts whose `lowerdir=` (or bind source, for one layer) names them.
    /// The view gets a key no other caller can hold ([`ViewKeys`]: records sharing a top chain
    /// are catalogued at once), is created under `lease` (the `containerd-lease` header), and
    /// is removed again before this returns. A process killed in between leaves a view that
    /// the next [`Containerd::remove_leftover_views`] removes, or containerd collects once the
    /// lease has expired.
    pub async fn snapshot_dirs(
        &self,
        lease: &ViewLease,
        chain_id: &str,
    ) -> Result<Option<Vec<PathBuf>>, ContainerdError> {
        let namespace = lease.namespace.as_str();
        let key = view_keys().next();
        let mut view_request = request(
            namespace,
            ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_owned(),
                key: key.clone(),
                parent: chain_id.to_owned(),
                labels: Default::default(),
            },
        )?;
        view_request.metadata_mut().insert(
            "containerd-lease",
            lease.id.parse().map_err(|_| ContainerdError::BadHeader {
                value: lease.id.clone(),
            })?,
        );
        let view = self.client.snapshots().view(view_request).await;
        // Removed whatever the view's outcome: a failed view may still have been recorded.
        if let Err(error) = self.remove_view(namespace, &key).await {
            tracing::warn!(%key, chain_id, namespace, error = %crate::telemetry::error_chain(&error), "could not remove a temporary view snapshot");
        }
        let view = match view {
            Ok(view) => view.into_inner(),
            Err(status) if status.code() == containerd_client::tonic::Code::NotFound => {
                // Not unpacked, unless what was not found is something else (the lease): then
                // it is an error, retried, never an empty layer list.
                return if self.snapshot_exists(namespace, chain_id).await? {
                    Err(ContainerdError::Call {
                        call: "snapshots.view",
                        source: status,
                    })
                } else {
                    Ok(None)
                };
            }
            Err(source) => {
                return Err(ContainerdError::Call {
                    call: "snapshots.view",
                    source,
                })
            }
        };
        let mounts: Vec<(String, String, Vec<String>)> = view
            .mounts
            .into_iter()
            .map(|m| (m.r#type, m.source, m.options))
            .collect();
        layer_dirs_from_mounts(chain_id, &mounts).map(Some)
    }

    /// Whether the snapshot `key` exists in `namespace`.
    async fn snapshot_exists(&self, namespace: &str, key: &str) -> Result<bool, ContainerdError> {
        let response = self
            .client
            .snapshots()
            .stat(request(
                namespace,
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_owned(),
                    key: key.to_owned(),
                },
            )?)
            .await;
        Ok(found("snapshots.stat", response)?.is_some())
    }

    /// Removes a view snapshot; one that is gone already is not an error.
    async fn remove_view(&self, namespace: &str, key: &str) -> Result<(), ContainerdError> {
        let response = self
            .client
            .snapshots()
            .remove(request(
                namespace,
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.to_owned(),
                    key: key.to_owned(),
                },
            )?)
            .await;
        found("snapshots.remove", response).map(drop)
    }

    /// Deletes a lease (asynchronously collected); one that is gone already is not an error.
    async fn delete_lease(&self, namespace: &str, id: &str) -> Result<(), ContainerdError> {
        let response = self
            .client
            .leases()
            .delete(request(
                namespace,
                DeleteLeaseRequest {
                    id: id.to_owned(),
                    sync: false,
                },
            )?)
            .await;
        found("leases.delete", response).map(drop)
    }

    /// Removes what an earlier imagegate process left in `namespace`: view snapshots
    /// (`imagegate-view-*`, from a process killed while it held one, or from versions that did
    /// not lease them) and imagegate view leases that have expired. This process's own views
    /// are left alone. Returns (views, leases) removed.
    pub async fn remove_leftover_views(
        &self,
        namespace: &str,
    ) -> Result<(usize, usize), ContainerdError> {
        let own = view_keys();
        let leftovers: Vec<String> = self
            .snapshot_infos(namespace)
            .await?
            .into_iter()
            .map(|info| info.name)
            .filter(|name| is_view_key(name) && !own.owns(name))
            .collect();
        for key in &leftovers {
            self.remove_view(namespace, key).await?;
        }
        let leases = self
            .client
            .leases()
            .list(request(
                namespace,
                ListLeasesRequest {
                    filters: Vec::new(),
                },
            )?)
            .await
            .map_err(call("leases.list"))?
            .into_inner()
            .leases;
        let now = crate::verify::time::now_unix();
        let expired: Vec<String> = leases
            .into_iter()
            .filter(|lease| {
                is_view_key(&lease.id)
                    && lease
                        .labels
                        .get(GC_EXPIRE_LABEL)
                        .is_none_or(|at| lease_expired(at, now))
            })
            .map(|lease| lease.id)
            .collect();
        for id in &expired {
            self.delete_lease(namespace, id).await?;
        }
        Ok((leftovers.len(), expired.len()))
    }
}

/// Every temporary view snapshot and view lease imagegate makes is named with this prefix, so
/// that leftovers can be told apart from everything else in containerd.
pub const VIEW_PREFIX: &str = "imagegate-view-";

/// How long a view lease protects its views. A view lives for one round trip and a lease for
/// one reconciliation (500 images take seconds); this only bounds how long a lease a killed
/// process left protects anything when nothing sweeps it.
pub const VIEW_LEASE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// A lease under which [`Containerd::snapshot_dirs`] creates its views: one per namespace for
/// a whole reconciliation (a lease costs two metadata writes), or one per image after an event.
#[derive(Debug, Clone)]
pub struct ViewLease {
    namespace: String,
    id: String,
}

/// The lease label containerd's garbage collector reads as the lease's expiry (RFC 3339).
const GC_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// Whether `name` is one of imagegate's view snapshots or view leases (any process's).
#[must_use]
pub fn is_view_key(name: &str) -> bool {
    name.starts_with(VIEW_PREFIX)
}

/// Whether a lease whose `containerd.io/gc.expire` label reads `at` has expired at Unix time
/// `now`; an unreadable expiry counts as expired (containerd ignores it: the lease would live
/// forever).
fn lease_expired(at: &str, now: i64) -> bool {
    crate::verify::time::parse_rfc3339(at).is_none_or(|at| at <= now)
}

/// Keys of this process's view snapshots and view leases: `imagegate-view-<pid>-<nonce>-<n>`. The counter makes
/// every key of one process unique (concurrent callers never share one); the pid and a random
/// nonce tell this process's keys from those a previous process left (pids are reused).
#[derive(Debug)]
pub struct ViewKeys {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl ViewKeys {
    /// Keys for process `pid`, told apart from other processes' by `nonce`.
    #[must_use]
    pub fn new(pid: u32, nonce: u64) -> Self {
        Self {
            prefix: format!("{VIEW_PREFIX}{pid}-{nonce:016x}-"),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A key no earlier call returned.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n}", self.prefix)
    }

    /// Whether `key` is one of these keys.
    #[must_use]
    pub fn owns(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// This process's view keys.
pub fn view_keys() -> &'static ViewKeys {
    static KEYS: std::sync::LazyLock<ViewKeys> = std::sync::LazyLock::new(|| {
        use std::hash::{BuildHasher as _, Hasher as _};
        // std's hasher keys are random per process: a nonce without a random-number crate.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        ViewKeys::new(std::process::id(), hasher.finish())
    });
    &KEYS
}

/// A container record: the image it was made from and the snapshot that is its root file
/// system (decision events name containers with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    /// containerd namespace.
    pub namespace: String,
    /// Container id.
    pub id: String,
    /// The image reference it was created from.
    pub image: String,
    /// Its writable snapshot's key (usually the id).
    pub snapshot_key: String,
    /// For a container kubelet made through the CRI plugin: its pod's and its own names.
    pub kubernetes: Option<KubernetesNames>,
}

/// The names kubelet labels a CRI container (and a pod's sandbox) with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesNames {
    /// `io.kubernetes.pod.name`.
    pub pod: String,
    /// `io.kubernetes.pod.namespace`.
    pub namespace: String,
    /// `io.kubernetes.container.name`; none for a pod's sandbox.
    pub container: Option<String>,
}

impl KubernetesNames {
    /// From a container record's labels; `None` without kubelet's pod labels.
    #[must_use]
    pub fn from_labels(labels: &std::collections::HashMap<String, String>) -> Option<Self> {
        Some(Self {
            pod: labels.get("io.kubernetes.pod.name")?.clone(),
            namespace: labels.get("io.kubernetes.pod.namespace")?.clone(),
            container: labels.get("io.kubernetes.container.name").cloned(),
        })
    }
}

impl ContainerRecord {
    fn new(namespace: &str, container: containerd_client::services::v1::Container) -> Self {
        Self {
            namespace: namespace.to_owned(),
            id: container.id,
            image: container.image,
            snapshot_key: container.snapshot_key,
            kubernetes: KubernetesNames::from_labels(&container.labels),
        }
    }
}

impl Containerd {
    /// Every container record in `namespace`.
    pub async fn containers(
        &self,
        namespace: &str,
    ) -> Result<Vec<ContainerRecord>, ContainerdError> {
        let response = self
            .client
            .containers()
            .list(request(namespace, ListContainersRequest::default())?)
            .await
            .map_err(call("containers.list"))?;
        Ok(response
            .into_inner()
            .containers
            .into_iter()
            .map(|c| ContainerRecord::new(namespace, c))
            .collect())
    }

    /// The running tasks in `namespace`: (container id, pid of the task's init process).
    pub async fn task_pids(&self, namespace: &str) -> Result<Vec<(String, u32)>, ContainerdError> {
        let response = self
            .client
            .tasks()
            .list(request(namespace, ListTasksRequest::default())?)
            .await
            .map_err(call("tasks.list"))?;
        Ok(response
            .into_inner()
            .tasks
            .into_iter()
            .map(|task| (task.id, task.pid))
            .collect())
    }

    /// One container record, `None` if it does not exist (any more).
    pub async fn container(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<ContainerRecord>, ContainerdError> {
        let response = self
            .client
            .containers()
            .get(request(
                namespace,
                GetContainerRequest { id: id.to_owned() },
            )?)
            .await;
        Ok(found("containers.get", response)?
            .and_then(|response| response.container)
            .map(|c| ContainerRecord::new(namespace, c)))
    }

    /// Keys of the active (writable) snapshots of `namespace`: container root file systems.
    pub async fn active_snapshots(&self, namespace: &str) -> Result<Vec<String>, ContainerdError> {
        const KIND_ACTIVE: i32 = 2;
        Ok(self
            .snapshot_infos(namespace)
            .await?
            .into_iter()
            .filter(|info| info.kind == KIND_ACTIVE)
            .map(|info| info.name)
            .collect())
    }

    /// Every snapshot of the overlayfs snapshotter in `namespace`.
    async fn snapshot_infos(
        &self,
        namespace: &str,
    ) -> Result<Vec<containerd_client::services::v1::snapshots::Info>, ContainerdError> {
        let mut stream = self
            .client
            .snapshots()
            .list(request(
                namespace,
                ListSnapshotsRequest {
                    snapshotter: SNAPSHOTTER.to_owned(),
                    filters: Vec::new(),
                },
            )?)
            .await
            .map_err(call("snapshots.list"))?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(page) = stream.message().await.map_err(call("snapshots.list"))? {
            infos.extend(page.info);
        }
        Ok(infos)
    }

    /// The writable `snapshots/<id>/fs` of an active snapshot (its mounts' `upperdir=`).
    pub async fn upper_dir(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<PathBuf>, ContainerdError> {
        let response = self
            .client
            .snapshots()
            .mounts(request(
                namespace,
                MountsRequest {
                    snapshotter: SNAPSHOTTER.to_owned(),
                    key: key.to_owned(),
                },
            )?)
            .await;
        let Some(mounts) = found("snapshots.mounts", response)?.map(|r| r.mounts) else {
            return Ok(None);
        };
        Ok(mounts
            .iter()
            .flat_map(|mount| mount.options.iter())
            .find_map(|option| option.strip_prefix("upperdir="))
            .map(PathBuf::from))
    }

    /// containerd's events (all namespaces) on a channel that closes when the stream ends.
    /// containerd sends the stream's headers only with its first event, so awaiting the
    /// subscription itself would block until something happens; a task does that instead. The
    /// request is on the wire when this returns, so events from then on are queued for us.
    pub fn events(&self) -> tokio::sync::mpsc::Receiver<containerd_client::types::Envelope> {
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        let me = self.clone();
        tokio::spawn(async move {
            let mut stream = match me.subscribe().await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&error), "subscribing to containerd events failed");
                    return;
                }
            };
            while let Ok(Some(envelope)) = stream.message().await {
                if sender.send(envelope).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }

    /// containerd's event stream (all namespaces). Resolves only once containerd sends its first
    /// event (see [`Containerd::events`]).
    pub async fn subscribe(
        &self,
    ) -> Result<
        containerd_client::tonic::Streaming<containerd_client::types::Envelope>,
        ContainerdError,
    > {
        Ok(self
            .client
            .events()
            .subscribe(SubscribeRequest {
                filters: Vec::new(),
            })
            .await
            .map_err(call("events.subscribe"))?
            .into_inner())
    }
}

fn record(
    namespace: &str,
    image: containerd_client::services::v1::Image,
) -> Result<ImageRecord, ContainerdError> {
    let target = image.target.ok_or_else(|| ContainerdError::NoTarget {
        name: image.name.clone(),
    })?;
    Ok(ImageRecord {
        namespace: namespace.to_owned(),
        name: image.name,
        media_type: target.media_type,
        digest: target.digest,
    })
}

/// Layer directories, bottom first, from a view's mounts: `overlay` with `lowerdir=top:...:bottom`
/// or `bind` of a single `.../fs`.
pub fn layer_dirs_from_mounts(
    chain_id: &str,
    mounts: &[(String, String, Vec<String>)],
) -> Result<Vec<PathBuf>, ContainerdError> {
    let bad = |detail: String| ContainerdError::Mounts {
        chain_id: chain_id.to_owned(),
        detail,
    };
    let [(kind, source, options)] = mounts else {
        return Err(bad(format!("{} mounts", mounts.len())));
    };
    let dirs: Vec<PathBuf> = match kind.as_str() {
        "bind" => vec![PathBuf::from(source)],
        "overlay" => {
            let lower = options
                .iter()
                .find_map(|option| option.strip_prefix("lowerdir="))
                .ok_or_else(|| bad("overlay without lowerdir".to_owned()))?;
            lower.split(':').rev().map(PathBuf::from).collect()
        }
        other => return Err(bad(format!("mount type {other}"))),
    };
    if dirs
        .iter()
        .any(|dir| !dir.is_absolute() || dir.file_name().is_none_or(|name| name != "fs"))
    {
        return Err(bad(format!("not snapshot directories: {dirs:?}")));
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_dirs_come_bottom_first_from_overlay_and_bind_mounts() {
        let overlay = vec![(
            "overlay".to_owned(),
            "overlay".to_owned(),
            vec![
                "index=off".to_owned(),
                "lowerdir=/s/snapshots/3/fs:/s/snapshots/2/fs:/s/snapshots/1/fs".to_owned(),
            ],
        )];
        let dirs = layer_dirs_from_mounts("c", &overlay).expect("overlay");
        assert_eq!(
            dirs,
            [
                "/s/snapshots/1/fs",
                "/s/snapshots/2/fs",
                "/s/snapshots/3/fs"
            ]
            .map(PathBuf::from)
            .to_vec()
        );
        let bind = vec![(
            "bind".to_owned(),
            "/s/snapshots/7/fs".to_owned(),
            vec!["ro".to_owned(), "rbind".to_owned()],
        )];
        assert_eq!(
            layer_dirs_from_mounts("c", &bind).expect("bind"),
            vec![PathBuf::from("/s/snapshots/7/fs")]
        );
        let odd = vec![("tmpfs".to_owned(), "x".to_owned(), vec![])];
        assert!(layer_dirs_from_mounts("c", &odd).is_err());
        let relative = vec![("bind".to_owned(), "snapshots/7/fs".to_owned(), vec![])];
        assert!(layer_dirs_from_mounts("c", &relative).is_err());
    }

    #[test]
    fn view_keys_are_unique_across_concurrent_callers_and_processes() {
        let keys = std::sync::Arc::new(ViewKeys::new(4242, 7));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let keys = std::sync::Arc::clone(&keys);
                std::thread::spawn(move || (0..1000).map(|_| keys.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for thread in threads {
            for key in thread.join().expect("thread") {
                assert!(is_view_key(&key) && keys.owns(&key), "{key}");
                // A snapshot key and a lease id: short, and a valid gRPC header value.
                assert!(
                    key.len() < 64 && key.bytes().all(|b| b.is_ascii_graphic()),
                    "{key}"
                );
                assert!(all.insert(key), "a key was handed out twice");
            }
        }
        assert_eq!(all.len(), 8000);
        // Another process (pid reused or not) never owns these, nor they its keys.
        for other in [ViewKeys::new(4242, 8), ViewKeys::new(4243, 7)] {
            let key = other.next();
            assert!(is_view_key(&key) && !keys.owns(&key), "{key}");
            assert!(!all.contains(&key), "{key}");
        }
        // What versions before leases left (`imagegate-view-<pid>-<chainID hex>`) is a leftover.
        let old = format!("imagegate-view-4242-{}", "ab".repeat(32));
        assert!(is_view_key(&old) && !keys.owns(&old));
        assert!(!keys.owns("imagegate-view-4242-0000000000000007-"));
        assert!(!is_view_key("sha256:abc") && !is_view_key("k8s.io/1/imagegate-view-1"));
        let this = view_keys();
        assert!(this.owns(&this.next()));
    }

    #[test]
    fn view_leases_expire_by_their_label() {
        assert!(lease_expired("2026-01-01T00:00:00Z", 1_800_000_000));
        assert!(!lease_expired("2030-01-01T00:00:00Z", 1_800_000_000));
        assert!(
            lease_expired("soon", 0),
            "an unreadable expiry never protects"
        );
    }
}
