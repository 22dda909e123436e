//! The daemon's side of `imagegate explain` ([`crate::explain`]): a container or image explained
//! from what the daemon holds (container records, verdicts with every signature's judgement,
//! the table, the last decision events of each container), never verified again.

use std::collections::BTreeSet;

use super::{image_ids, table::ImageKey, Daemon};
use crate::{
    enforce::Backend,
    explain::{
        looks_like_reference, names_image, Answer, AnsweredBy, ContainerInfo, Explanation,
        ImageExplanation, VerdictState,
    },
};

impl<B: Backend> Daemon<B> {
    /// Explains `target`: a container (its id, or a unique prefix of one), else an image (a
    /// reference, an image id or a manifest digest), in `namespace` or every namespace.
    #[must_use]
    pub fn explain(&self, target: &str, namespace: Option<&str>) -> Answer {
        let containers = if looks_like_reference(target) {
            Vec::new()
        } else {
            self.containers.find(target, namespace)
        };
        match containers.as_slice() {
            [(record, removed)] => {
                return Answer::Explained(Box::new(
                    self.explain_container(target, record, *removed),
                ));
            }
            [] => {}
            several => {
                return Answer::Ambiguous {
                    target: target.to_owned(),
                    candidates: several
                        .iter()
                        .map(|(record, _)| format!("{}/{}", record.namespace, record.id))
                        .collect(),
                };
            }
        }
        let images = self.images_named(target, namespace);
        if images.is_empty() {
            return Answer::Unknown {
                target: target.to_owned(),
                message: format!(
                    "no container or image {target} known to the daemon{} (a container is named \
                     for {} s after its removal; for an image not on this node: imagegate verify)",
                    namespace.map_or_else(String::new, |n| format!(" in namespace {n}")),
                    super::describe::RETAIN_DELETED.as_secs(),
                ),
            };
        }
        Answer::Explained(Box::new(Explanation {
            target: target.to_owned(),
            answered_by: AnsweredBy::Daemon,
            daemon_error: None,
            container: None,
            images: images.iter().map(|key| self.explain_image(key)).collect(),
            denials: Vec::new(),
        }))
    }

    fn explain_container(
        &self,
        target: &str,
        record: &crate::catalog::ContainerRecord,
        removed: bool,
    ) -> Explanation {
        let key = ImageKey {
            namespace: record.namespace.clone(),
            name: record.image.clone(),
        };
        // A container created from an image id is judged by the named images it resolves to.
        let judged = self.image_ids.images_of(&self.table, &key);
        let images = if judged.is_empty() {
            vec![self.explain_image(&key)]
        } else {
            judged
                .iter()
                .map(|(key, _)| self.explain_image(key))
                .collect()
        };
        let enforced_trust = self
            .writable
            .get(&(record.namespace.clone(), record.snapshot_key.clone()))
            .and_then(|(root, _)| self.container_trust.get(root))
            .and_then(|state| serde_json::to_value(state.trust).ok())
            .and_then(|value| value.as_str().map(str::to_owned));
        let kubernetes = record.kubernetes.as_ref();
        Explanation {
            target: target.to_owned(),
            answered_by: AnsweredBy::Daemon,
            daemon_error: None,
            container: Some(ContainerInfo {
                namespace: record.namespace.clone(),
                id: record.id.clone(),
                image: record.image.clone(),
                from_image_id: image_ids::is_image_id(&record.image),
                pod: kubernetes.map(|k| k.pod.clone()),
                pod_namespace: kubernetes.map(|k| k.namespace.clone()),
                name: kubernetes.and_then(|k| k.container.clone()),
                removed,
                enforced_trust,
            }),
            images,
            denials: self.containers.denials(&record.namespace, &record.id),
        }
    }

    /// The image records `target` names: by reference, by image id (the named images it
    /// resolves to), or by manifest digest.
    fn images_named(&self, target: &str, namespace: Option<&str>) -> Vec<ImageKey> {
        let known: BTreeSet<&ImageKey> = self
            .verdicts
            .keys()
            .chain(self.table.images().map(|(key, _)| key))
            .chain(self.verifications.in_flight.keys())
            .chain(self.uncatalogued.keys())
            .chain(self.image_ids.keys())
            .filter(|key| namespace.is_none_or(|n| key.namespace == n))
            .collect();
        let mut found: BTreeSet<ImageKey> = BTreeSet::new();
        for key in known {
            if key.name == target && image_ids::is_image_id(target) {
                let named = self.image_ids.images_of(&self.table, key);
                if named.is_empty() {
                    found.insert(key.clone());
                }
                found.extend(named.into_iter().map(|(key, _)| key.clone()));
            } else if names_image(target, &key.name)
                || self
                    .table
                    .get(key)
                    .is_some_and(|entry| entry.manifest_digest == target)
                || self.verdicts.get(key).is_some_and(|v| v.digest == target)
            {
                found.insert(key.clone());
            }
        }
        found.into_iter().collect()
    }

    /// One image record's verdict in words, or why it has none.
    fn explain_image(&self, key: &ImageKey) -> ImageExplanation {
        let policy = Some(self.verifier.policy.as_ref());
        let namespace = Some(key.namespace.as_str());
        let running = self.verifications.in_flight.get(key);
        if let Some(verdict) = self.verdicts.get(key) {
            let mut image = ImageExplanation::from_verdict(namespace, &key.name, verdict, policy);
            if running.is_some() {
                image
                    .notes
                    .push("being verified again; this verdict holds until that ends".to_owned());
            }
            return image;
        }
        let digest = self
            .table
            .get(key)
            .map(|entry| entry.manifest_digest.as_str());
        if let Some(running) = running {
            return ImageExplanation::without_verdict(
                namespace,
                &key.name,
                Some(&running.digest),
                VerdictState::Pending,
                "being verified now; not trusted until that ends",
                policy,
            );
        }
        let why = if let Some(failed) = self.uncatalogued.get(key) {
            format!(
                "not judged: containerd's record could not be read ({} attempts; retried): {}",
                failed.attempts, failed.error
            )
        } else if image_ids::is_image_id(&key.name) {
            "an image id that no named image the daemon judged resolves to: untrusted".to_owned()
        } else {
            "not judged: containerd has no such image record (removed?): untrusted".to_owned()
        };
        ImageExplanation::without_verdict(
            namespace,
            &key.name,
            digest,
            VerdictState::Unjudged,
            &why,
            policy,
        )
    }
}
