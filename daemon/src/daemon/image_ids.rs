//! Image records named by an image id (`sha256:<config digest>`), which containerd's CRI plugin
//! creates beside every image it pulls, and the trust of a container made from one.
//!
//! Such a name is not a reference: parsed as one it reads `docker.io/library/sha256:<hex>`, which
//! would put the record under a policy scope (or the default) that has nothing to do with the
//! image, let it vouch for the image's layers (an audit default made a rejected image's layers
//! audit-only), and send the daemon to docker.io for signatures. So these records are never
//! judged and never enter the layer table; the daemon only remembers which platform manifest
//! each one resolves to. A container whose record names one (kubelet creates containers from
//! the image id; the CRI plugin records the image's first name, and the id only when the image
//! has no other name) gets the verdict of the image's named records: trusted only if there is at
//! least one and every one is trusted, since the name the pod used is unknown.

use std::collections::HashMap;

use super::table::{ImageEntry, ImageKey, LayerTable};
use crate::enforce::ContainerTrust;

/// Whether `name` is an image id (`sha256:` and 64 lowercase hex digits) rather than a
/// reference.
#[must_use]
pub fn is_image_id(name: &str) -> bool {
    name.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Image-id records: record → the platform manifest digest it resolves to (`None` until it
/// could be read).
#[derive(Debug, Default)]
pub struct ImageIds {
    records: HashMap<ImageKey, Option<String>>,
}

impl ImageIds {
    /// Notes an image-id record and the manifest it resolves to.
    pub fn insert(&mut self, key: ImageKey, manifest_digest: Option<String>) {
        self.records.insert(key, manifest_digest);
    }

    /// Forgets a deleted image-id record.
    pub fn remove(&mut self, key: &ImageKey) {
        self.records.remove(key);
    }

    /// Replaces every record (after a reconciliation).
    pub fn replace(&mut self, records: HashMap<ImageKey, Option<String>>) {
        self.records = records;
    }

    /// Whether `key` is an image-id record containerd has.
    #[must_use]
    pub fn contains(&self, key: &ImageKey) -> bool {
        self.records.contains_key(key)
    }

    /// The image-id records.
    pub fn keys(&self) -> impl Iterator<Item = &ImageKey> {
        self.records.keys()
    }

    /// How many image-id records containerd has.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The judged images a container whose record names image `key` is made from: that image
    /// itself, or for an image id, every named image in its namespace with the manifest the id
    /// resolves to. Empty when nothing judged matches (the container is then untrusted).
    #[must_use]
    pub fn images_of<'a>(
        &self,
        table: &'a LayerTable,
        key: &ImageKey,
    ) -> Vec<(&'a ImageKey, &'a ImageEntry)> {
        if !is_image_id(&key.name) {
            return table.get_key_value(key).into_iter().collect();
        }
        let Some(Some(manifest)) = self.records.get(key) else {
            return Vec::new();
        };
        let mut images: Vec<(&ImageKey, &ImageEntry)> = table
            .images()
            .filter(|(k, entry)| {
                k.namespace == key.namespace
                    && !is_image_id(&k.name)
                    && entry.manifest_digest == *manifest
            })
            .collect();
        images.sort_by(|a, b| a.0.cmp(b.0));
        images
    }
}

/// The trust of a container made from `images` (see [`ImageIds::images_of`]): trusted if every
/// one is trusted, audit if every one is trusted or audited, else (none included) untrusted.
#[must_use]
pub fn container_trust(images: &[(&ImageKey, &ImageEntry)]) -> ContainerTrust {
    if images.is_empty() {
        ContainerTrust::Untrusted
    } else if images.iter().all(|(_, entry)| entry.trusted) {
        ContainerTrust::Trusted
    } else if images.iter().all(|(_, entry)| entry.trusted || entry.audit) {
        ContainerTrust::Audit
    } else {
        ContainerTrust::Untrusted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:049bc03b8e4853e5ae542cef8f5866cb1f6c8351166625dd4a15b82ef9deb806";

    fn key(name: &str) -> ImageKey {
        ImageKey {
            namespace: "k8s.io".into(),
            name: name.into(),
        }
    }

    fn entry(manifest: &str, trusted: bool, audit: bool) -> ImageEntry {
        ImageEntry {
            manifest_digest: manifest.into(),
            trusted,
            audit,
            layers: Vec::new(),
        }
    }

    #[test]
    fn only_a_full_sha256_image_id_is_one() {
        assert!(is_image_id(ID));
        assert!(!is_image_id(&ID[..70]), "too short");
        assert!(!is_image_id(&ID.to_uppercase()));
        assert!(!is_image_id("sha256:xyz"));
        assert!(!is_image_id("docker.io/library/busybox:latest"));
        assert!(!is_image_id(&format!("registry.test/app@{ID}")));
        assert!(!is_image_id(&format!("{ID}0")));
    }

    #[test]
    fn a_container_of_an_image_id_is_trusted_only_if_every_name_of_its_manifest_is() {
        let mut table = LayerTable::default();
        table.upsert(key("registry.test/a:1"), entry("sha256:m", true, false));
        let mut ids = ImageIds::default();
        ids.insert(key(ID), Some("sha256:m".into()));
        let images = ids.images_of(&table, &key(ID));
        assert_eq!(images.len(), 1);
        assert_eq!(container_trust(&images), ContainerTrust::Trusted);

        // Another name of the same manifest that an audit scope rejects: audit.
        table.upsert(key("registry.test/b:1"), entry("sha256:m", false, true));
        assert_eq!(
            container_trust(&ids.images_of(&table, &key(ID))),
            ContainerTrust::Audit
        );
        // And one an enforcing scope rejects: untrusted.
        table.upsert(key("registry.test/c:1"), entry("sha256:m", false, false));
        assert_eq!(
            container_trust(&ids.images_of(&table, &key(ID))),
            ContainerTrust::Untrusted
        );
        // Images of other manifests or namespaces do not count.
        let mut other = LayerTable::default();
        other.upsert(key("registry.test/a:1"), entry("sha256:m", true, false));
        other.upsert(
            key("registry.test/d:1"),
            entry("sha256:other", false, false),
        );
        other.upsert(
            ImageKey {
                namespace: "default".into(),
                name: "registry.test/e:1".into(),
            },
            entry("sha256:m", false, false),
        );
        assert_eq!(
            container_trust(&ids.images_of(&other, &key(ID))),
            ContainerTrust::Trusted
        );
    }

    #[test]
    fn an_image_id_with_no_named_image_or_unread_vouches_for_nothing() {
        let mut table = LayerTable::default();
        table.upsert(key("registry.test/a:1"), entry("sha256:m", true, false));
        // An image-id record that somehow reached the table is no name of the image.
        table.upsert(key(ID), entry("sha256:m", true, false));
        let mut ids = ImageIds::default();
        let unknown = ids.images_of(&table, &key(ID));
        assert_eq!(container_trust(&unknown), ContainerTrust::Untrusted);
        ids.insert(key(ID), None);
        assert_eq!(
            container_trust(&ids.images_of(&table, &key(ID))),
            ContainerTrust::Untrusted
        );
        ids.insert(key(ID), Some("sha256:m".into()));
        let images = ids.images_of(&table, &key(ID));
        assert_eq!(images.len(), 1, "{images:?}");
        assert_eq!(images[0].0.name, "registry.test/a:1");
        ids.insert(key(ID), Some("sha256:gone".into()));
        assert_eq!(
            container_trust(&ids.images_of(&table, &key(ID))),
            ContainerTrust::Untrusted
        );
        // A named container's image is itself.
        let named = ids.images_of(&table, &key("registry.test/a:1"));
        assert_eq!(container_trust(&named), ContainerTrust::Trusted);
        assert!(ids
            .images_of(&table, &key("registry.test/none:1"))
            .is_empty());
    }
}
