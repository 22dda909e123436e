//! The layer table: which layer directories the kernel may trust. A layer is verified while at
//! least one image whose verdict is trusted contains it; otherwise it is audit-only while an
//! untrusted image of an audit-mode policy scope contains it; otherwise the kernel does not know
//! it (deny). The kernel's map is this table's mirror. Pure bookkeeping, unit-tested without a
//! kernel.

use std::collections::{BTreeSet, HashMap};

use crate::enforce::LayerId;

/// An image as containerd names it: namespace and reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ImageKey {
    /// containerd namespace.
    pub namespace: String,
    /// Image reference.
    pub name: String,
}

/// What the table knows of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The platform manifest digest that was verified.
    pub manifest_digest: String,
    /// Whether its verdict is trusted (only trusted images vouch for layers).
    pub trusted: bool,
    /// Whether its policy scope is in audit mode (an untrusted image's layers are then allowed
    /// and reported rather than denied).
    pub audit: bool,
    /// Its layers, bottom first, with their chainIDs. Empty until unpacked.
    pub layers: Vec<(String, LayerId)>,
}

/// The kernel map edits a table change needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Layers that became verified.
    pub verified: Vec<LayerId>,
    /// Layers that became audit-only.
    pub audit: Vec<LayerId>,
    /// Layers the kernel must forget (unverified: denied in enforce mode).
    pub unverified: Vec<LayerId>,
}

impl Changes {
    /// Whether the kernel map needs no edit.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty() && self.audit.is_empty() && self.unverified.is_empty()
    }
}

/// What the kernel should hold for a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    /// A trusted image contains it.
    Verified,
    /// Only untrusted images of audit scopes contain it.
    Audit,
}

/// Who vouches for a layer, for events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerOwner {
    /// The image.
    pub image: ImageKey,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// The layer's chainID in that image.
    pub chain_id: String,
    /// Whether the image is trusted.
    pub trusted: bool,
}

/// The table.
#[derive(Debug, Default)]
pub struct LayerTable {
    images: HashMap<ImageKey, ImageEntry>,
    /// Trusted images per layer.
    trusted_refs: HashMap<LayerId, u32>,
    /// Untrusted audit-scope images per layer.
    audit_refs: HashMap<LayerId, u32>,
}

impl LayerTable {
    /// Sets (or replaces) an image's entry.
    pub fn upsert(&mut self, key: ImageKey, entry: ImageEntry) -> Changes {
        let before = self.desired();
        if let Some(old) = self.images.remove(&key) {
            self.release(&old);
        }
        self.acquire(&entry);
        self.images.insert(key, entry);
        self.diff(&before)
    }

    /// Forgets an image (deleted from containerd).
    pub fn remove(&mut self, key: &ImageKey) -> Changes {
        let before = self.desired();
        if let Some(old) = self.images.remove(key) {
            self.release(&old);
        }
        self.diff(&before)
    }

    fn refs(&mut self, entry: &ImageEntry) -> Option<&mut HashMap<LayerId, u32>> {
        if entry.trusted {
            Some(&mut self.trusted_refs)
        } else if entry.audit {
            Some(&mut self.audit_refs)
        } else {
            None
        }
    }

    fn acquire(&mut self, entry: &ImageEntry) {
        let layers = unique_layers(entry);
        if let Some(refs) = self.refs(entry) {
            for layer in layers {
                *refs.entry(layer).or_default() += 1;
            }
        }
    }

    fn release(&mut self, entry: &ImageEntry) {
        let layers = unique_layers(entry);
        if let Some(refs) = self.refs(entry) {
            for layer in layers {
                if let Some(count) = refs.get_mut(&layer) {
                    *count -= 1;
                    if *count == 0 {
                        refs.remove(&layer);
                    }
                }
            }
        }
    }

    /// The kernel state every known layer should have.
    #[must_use]
    pub fn desired(&self) -> std::collections::BTreeMap<LayerId, Desired> {
        let mut out: std::collections::BTreeMap<LayerId, Desired> = self
            .audit_refs
            .keys()
            .map(|&layer| (layer, Desired::Audit))
            .collect();
        out.extend(
            self.trusted_refs
                .keys()
                .map(|&layer| (layer, Desired::Verified)),
        );
        out
    }

    fn diff(&self, before: &std::collections::BTreeMap<LayerId, Desired>) -> Changes {
        let after = self.desired();
        let mut changes = Changes::default();
        for (layer, state) in &after {
            if before.get(layer) != Some(state) {
                match state {
                    Desired::Verified => changes.verified.push(*layer),
                    Desired::Audit => changes.audit.push(*layer),
                }
            }
        }
        changes.unverified = before
            .keys()
            .filter(|layer| !after.contains_key(layer))
            .copied()
            .collect();
        changes
    }

    /// Whether a layer is verified.
    #[must_use]
    pub fn is_verified(&self, layer: LayerId) -> bool {
        self.trusted_refs.contains_key(&layer)
    }

    /// Every verified layer.
    pub fn verified(&self) -> impl Iterator<Item = LayerId> + '_ {
        self.trusted_refs.keys().copied()
    }

    /// The images that contain a layer (trusted or not), for naming them in events.
    #[must_use]
    pub fn owners(&self, layer: LayerId) -> Vec<LayerOwner> {
        let mut owners: Vec<LayerOwner> =
            self.images
                .iter()
                .flat_map(|(key, entry)| {
                    entry.layers.iter().filter(move |(_, id)| *id == layer).map(
                        move |(chain_id, _)| LayerOwner {
                            image: key.clone(),
                            manifest_digest: entry.manifest_digest.clone(),
                            chain_id: chain_id.clone(),
                            trusted: entry.trusted,
                        },
                    )
                })
                .collect();
        owners.sort_by(|a, b| a.image.cmp(&b.image));
        owners
    }

    /// Images by verdict: (trusted, untrusted).
    #[must_use]
    pub fn counts(&self) -> (usize, usize) {
        let trusted = self.images.values().filter(|e| e.trusted).count();
        (trusted, self.images.len() - trusted)
    }

    /// One image's entry.
    #[must_use]
    pub fn get(&self, key: &ImageKey) -> Option<&ImageEntry> {
        self.images.get(key)
    }

    /// One image's key and entry.
    #[must_use]
    pub fn get_key_value(&self, key: &ImageKey) -> Option<(&ImageKey, &ImageEntry)> {
        self.images.get_key_value(key)
    }

    /// Every image key.
    pub fn images(&self) -> impl Iterator<Item = (&ImageKey, &ImageEntry)> {
        self.images.iter()
    }
}

fn unique_layers(entry: &ImageEntry) -> BTreeSet<LayerId> {
    entry.layers.iter().map(|(_, id)| *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(ino: u64) -> LayerId {
        LayerId::new(1, ino)
    }

    fn key(name: &str) -> ImageKey {
        ImageKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn entry(trusted: bool, layers: &[u64]) -> ImageEntry {
        ImageEntry {
            manifest_digest: "sha256:m".into(),
            trusted,
            audit: false,
            layers: layers
                .iter()
                .map(|&ino| (format!("sha256:{ino}"), layer(ino)))
                .collect(),
        }
    }

    #[test]
    fn trusted_image_verifies_its_layers_untrusted_does_not() {
        let mut table = LayerTable::default();
        let changes = table.upsert(key("signed"), entry(true, &[1, 2]));
        assert_eq!(changes.verified, vec![layer(1), layer(2)]);
        let changes = table.upsert(key("unsigned"), entry(false, &[1, 3]));
        assert!(
            changes.is_empty(),
            "an untrusted image changes nothing: {changes:?}"
        );
        assert!(table.is_verified(layer(1)));
        assert!(
            !table.is_verified(layer(3)),
            "a layer only an untrusted image has stays unverified"
        );
    }

    #[test]
    fn shared_layer_stays_verified_until_the_last_trusted_image_goes() {
        let mut table = LayerTable::default();
        table.upsert(key("a"), entry(true, &[1, 2]));
        table.upsert(key("b"), entry(true, &[1, 3]));
        let changes = table.remove(&key("a"));
        assert_eq!(
            changes.unverified,
            vec![layer(2)],
            "only a's own layer goes"
        );
        assert!(
            table.is_verified(layer(1)),
            "b still vouches for the shared layer"
        );
        let changes = table.remove(&key("b"));
        assert_eq!(changes.unverified, vec![layer(1), layer(3)]);
        assert_eq!(table.verified().count(), 0);
    }

    #[test]
    fn a_changed_verdict_revokes_layers() {
        let mut table = LayerTable::default();
        table.upsert(key("a"), entry(true, &[1]));
        let changes = table.upsert(key("a"), entry(false, &[1]));
        assert_eq!(changes.unverified, vec![layer(1)]);
        let changes = table.upsert(key("a"), entry(true, &[1]));
        assert_eq!(changes.verified, vec![layer(1)]);
    }

    #[test]
    fn a_layer_repeated_in_one_image_is_counted_once() {
        let mut table = LayerTable::default();
        table.upsert(key("a"), entry(true, &[1, 1]));
        let changes = table.remove(&key("a"));
        assert_eq!(changes.unverified, vec![layer(1)]);
        assert!(!table.is_verified(layer(1)));
    }

    #[test]
    fn audit_scope_images_make_their_layers_audit_only_unless_a_trusted_image_vouches() {
        let mut table = LayerTable::default();
        let audit = ImageEntry {
            audit: true,
            ..entry(false, &[1, 2])
        };
        let changes = table.upsert(key("audited"), audit);
        assert_eq!(changes.audit, vec![layer(1), layer(2)]);
        let changes = table.upsert(key("signed"), entry(true, &[2]));
        assert_eq!(changes.verified, vec![layer(2)], "trusted wins over audit");
        let changes = table.remove(&key("signed"));
        assert_eq!(changes.audit, vec![layer(2)], "back to audit-only");
        assert!(changes.unverified.is_empty());
        let changes = table.remove(&key("audited"));
        assert_eq!(changes.unverified, vec![layer(1), layer(2)]);
    }

    #[test]
    fn owners_name_every_image_with_the_layer() {
        let mut table = LayerTable::default();
        table.upsert(key("a"), entry(true, &[1]));
        table.upsert(key("b"), entry(false, &[1, 2]));
        let owners = table.owners(layer(1));
        assert_eq!(owners.len(), 2);
        assert_eq!(owners[0].image.name, "a");
        assert!(owners[0].trusted && !owners[1].trusted);
        assert_eq!(table.counts(), (1, 1));
    }
}
