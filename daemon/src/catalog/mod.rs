//! The catalog: what containerd has, in the terms enforcement needs. For every image in every
//! namespace: its manifest (the platform manifest actually unpacked, and the index above it),
//! config, layer chainIDs, and the overlayfs snapshot directories (`snapshots/<id>/fs`) that hold
//! those layers, with their `(dev, ino)`.

pub mod containerd;
pub mod content_watch;

use std::path::PathBuf;

pub use containerd::{
    ContainerRecord, Containerd, ContainerdError, ImageRecord, KubernetesNames, ResolvedImage,
    ViewLease,
};

use crate::enforce::LayerId;

/// One layer of an image, as unpacked on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The layer's chainID (containerd's committed snapshot name).
    pub chain_id: String,
    /// `.../snapshots/<id>/fs`.
    pub dir: PathBuf,
    /// Its identity in the kernel's layer table.
    pub id: LayerId,
}

/// An image with its layers located on disk.
#[derive(Debug, Clone)]
pub struct CatalogImage {
    /// Manifest, config and chainIDs.
    pub resolved: ResolvedImage,
    /// Layers bottom first; empty when the image is not unpacked (yet).
    pub layers: Vec<Layer>,
}

/// Why one image could not be catalogued (others still are).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("layer directory {dir}")]
    Stat {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {name} has {chain_ids} layers but its snapshot chain has {dirs} directories")]
    ChainLength {
        name: String,
        chain_ids: usize,
        dirs: usize,
    },
    #[error("cataloguing image {name} stopped: {detail}")]
    Task { name: String, detail: String },
    #[error("no lease for view snapshots")]
    Lease(#[source] std::sync::Arc<ContainerdError>),
}

/// Locates the layers of one resolved image, under a view lease of its own. An image that is
/// not unpacked has no snapshots: that is not an error, its layer list is empty.
pub async fn locate(
    containerd: &Containerd,
    resolved: ResolvedImage,
) -> Result<CatalogImage, CatalogError> {
    let lease = containerd.view_lease(&resolved.record.namespace).await?;
    let located = locate_under(containerd, &lease, resolved).await;
    containerd.release(&lease).await;
    located
}

/// [`locate`] under `lease` (of the image's namespace).
pub async fn locate_under(
    containerd: &Containerd,
    lease: &ViewLease,
    resolved: ResolvedImage,
) -> Result<CatalogImage, CatalogError> {
    let Some(top) = resolved.chain_ids.last() else {
        return Ok(CatalogImage {
            resolved,
            layers: Vec::new(),
        });
    };
    let Some(dirs) = containerd.snapshot_dirs(lease, top).await? else {
        return Ok(CatalogImage {
            resolved,
            layers: Vec::new(),
        });
    };
    if dirs.len() != resolved.chain_ids.len() {
        return Err(CatalogError::ChainLength {
            name: resolved.record.name.clone(),
            chain_ids: resolved.chain_ids.len(),
            dirs: dirs.len(),
        });
    }
    let mut layers = Vec::with_capacity(dirs.len());
    for (chain_id, dir) in resolved.chain_ids.iter().zip(dirs) {
        let id = LayerId::of(&dir).map_err(|source| CatalogError::Stat {
            dir: dir.clone(),
            source,
        })?;
        layers.push(Layer {
            chain_id: chain_id.clone(),
            dir,
            id,
        });
    }
    Ok(CatalogImage { resolved, layers })
}

/// Follows one image record to its manifest, config and layers on disk.
pub async fn catalogue(
    containerd: &Containerd,
    record: &ImageRecord,
) -> Result<CatalogImage, CatalogError> {
    let resolved = containerd.resolve(record).await?;
    locate(containerd, resolved).await
}

/// [`catalogue`] under `lease` (of the record's namespace).
async fn catalogue_under(
    containerd: &Containerd,
    lease: &ViewLease,
    record: &ImageRecord,
) -> Result<CatalogImage, CatalogError> {
    let resolved = containerd.resolve(record).await?;
    locate_under(containerd, lease, resolved).await
}

/// Images catalogued at once during a reconciliation: each costs a few containerd round trips
/// (manifest, config, a leased view snapshot); overlapping them keeps a 500-image start short.
const CATALOG_CONCURRENCY: usize = 8;

/// Every image record in `namespaces` (usually all of containerd's), each with its layers or
/// the error that stopped it, in containerd's listing order. Every record listed is in the
/// answer: one that could not be catalogued comes with its error, never left out.
pub async fn reconcile(
    containerd: &Containerd,
    namespaces: &[String],
) -> Result<Vec<(ImageRecord, Result<CatalogImage, CatalogError>)>, CatalogError> {
    let mut records = Vec::new();
    for namespace in namespaces {
        records.extend(containerd.images(namespace).await?);
    }
    // One view lease per namespace for the whole pass; a namespace whose lease cannot be made
    // has its records fail (and retried), not left out.
    let mut leases = std::collections::HashMap::new();
    for record in &records {
        if !leases.contains_key(&record.namespace) {
            let lease = containerd
                .view_lease(&record.namespace)
                .await
                .map_err(std::sync::Arc::new);
            leases.insert(record.namespace.clone(), lease);
        }
    }
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(CATALOG_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, record) in records.iter().enumerate() {
        let containerd = containerd.clone();
        let limit = std::sync::Arc::clone(&limit);
        let record = record.clone();
        let lease = leases.get(&record.namespace).cloned();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = match lease {
                Some(Ok(lease)) => catalogue_under(&containerd, &lease, &record).await,
                Some(Err(error)) => Err(CatalogError::Lease(error)),
                None => Err(CatalogError::Task {
                    name: record.name.clone(),
                    detail: "no view lease for its namespace".to_owned(),
                }),
            };
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<CatalogImage, CatalogError>>> =
        records.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            // A task that panicked catalogued nothing; its record is reported below.
            Err(error) => tracing::error!(%error, "catalog task failed"),
        }
    }
    for lease in leases.into_values().flatten() {
        containerd.release(&lease).await;
    }
    Ok(records
        .into_iter()
        .zip(results)
        .map(|(record, result)| {
            let result = result.unwrap_or_else(|| {
                Err(CatalogError::Task {
                    name: record.name.clone(),
                    detail: "the task panicked".to_owned(),
                })
            });
            (record, result)
        })
        .collect())
}
