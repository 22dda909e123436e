//! Registry and containerd documents: OCI/Docker manifests and indexes as discovery reads them
//! and the catalog read them (`oci`: the `oci-spec` types with imagegate's checks), image configs,
//! and sigstore's `trusted_root.json`.
//!
//! Invariants: every digest an accepted document carries is `sha256:<64 lowercase hex>`; the
//! platform chosen from an index is one of its entries and matches the host; chainIDs follow
//! the diffIDs one to one; a trusted root keeps every key and certificate it lists (nothing is
//! dropped silently; an unusable log key is listed with its reason).

use imagegate::oci::{self, media_type, Descriptor, Document};
use imagegate::verify::TrustMaterial;
use serde_json::Value;

use super::{dirs_in, files_in, fixtures, is_sha256_digest, sha256};

fn assert_sha256<'a>(descriptors: impl IntoIterator<Item = &'a Descriptor>) {
    for d in descriptors {
        let digest = d.digest().to_string();
        assert!(is_sha256_digest(&digest), "accepted digest {digest:?}");
    }
}

pub fn check_oci(data: &[u8]) {
    let index_digest = format!("sha256:{}", hex::encode(sha256(data)));
    for declared in [
        media_type::OCI_INDEX,
        media_type::OCI_MANIFEST,
        media_type::DOCKER_MANIFEST,
        media_type::DOCKER_LIST,
        "",
    ] {
        match oci::parse_document("fuzz", declared, data) {
            Ok(Document::Index(index)) => {
                assert_eq!(index.schema_version(), 2);
                assert_sha256(index.manifests().iter().chain(index.subject()));
                let host = oci::host_platform();
                if let Ok(chosen) = oci::select_platform(&index_digest, &index, &host) {
                    assert!(index.manifests().iter().any(|e| std::ptr::eq(e, chosen)));
                    let platform = chosen
                        .platform()
                        .as_ref()
                        .expect("chosen entry has a platform");
                    assert_eq!(
                        (platform.os(), platform.architecture()),
                        (host.os(), host.architecture())
                    );
                }
            }
            Ok(Document::Manifest(manifest)) => {
                assert_eq!(manifest.schema_version(), 2);
                assert_sha256(
                    std::iter::once(manifest.config())
                        .chain(manifest.layers())
                        .chain(manifest.subject()),
                );
            }
            Err(_) => {}
        }
    }
    if let Ok(diff_ids) = oci::parse_config_diff_ids("fuzz", data) {
        for diff_id in &diff_ids {
            assert!(is_sha256_digest(diff_id), "accepted diffID {diff_id:?}");
        }
        let chain = oci::chain_ids(&diff_ids);
        assert_eq!(chain.len(), diff_ids.len());
        assert_eq!(chain.first(), diff_ids.first());
        assert!(chain.iter().all(|id| is_sha256_digest(id)));
    }
    oci::verify_digest(&index_digest, data).expect("the document's own digest");
    let mut other = sha256(data);
    other[0] ^= 1;
    assert!(oci::verify_digest(&format!("sha256:{}", hex::encode(other)), data).is_err());
}

pub fn check_trusted_root(data: &[u8]) {
    let Ok(trust) = TrustMaterial::from_trusted_root_json(data) else {
        return;
    };
    let raw: Value = serde_json::from_slice(data).expect("an accepted trusted root is JSON");
    let count = |key: &str| raw[key].as_array().map_or(0, Vec::len);
    // A log whose key imagegate cannot use is kept among the unusable ones, with its reason.
    assert_eq!(
        trust.tlogs.len() + trust.unusable_tlogs.len(),
        count("tlogs"),
        "a transparency log was dropped"
    );
    assert_eq!(
        trust.ctlogs.len() + trust.unusable_ctlogs.len(),
        count("ctlogs"),
        "a CT log was dropped"
    );
    for unusable in trust.unusable_tlogs.iter().chain(&trust.unusable_ctlogs) {
        assert!(
            !unusable.reason.is_empty(),
            "an unusable log without a reason"
        );
    }
    let certificates = |key: &str| -> usize {
        raw[key].as_array().map_or(0, |authorities| {
            authorities
                .iter()
                .map(|a| {
                    a["certChain"]["certificates"]
                        .as_array()
                        .map_or(0, Vec::len)
                })
                .sum()
        })
    };
    assert_eq!(trust.cas.len(), certificates("certificateAuthorities"));
    assert_eq!(trust.tsas.len(), certificates("timestampAuthorities"));
    for log in &trust.tlogs {
        assert!(trust.tlog(&log.log_id).is_some());
    }
}

pub fn oci_seeds() -> Vec<Vec<u8>> {
    let testvectors = fixtures().join("testvectors");
    let mut seeds = Vec::new();
    for category in dirs_in(&testvectors) {
        for set in dirs_in(&category) {
            if let Ok(bytes) = std::fs::read(set.join("manifest.json")) {
                seeds.push(bytes);
            }
        }
    }
    // The registry fixtures' blobs: manifests, indexes (referrers, multi-arch) and configs.
    for blob in files_in(&fixtures().join("generated/registry/blobs")) {
        if let Ok(bytes) = std::fs::read(&blob) {
            if bytes.len() < 64 << 10 && bytes.first() == Some(&b'{') {
                seeds.push(bytes);
            }
        }
    }
    let amd64 = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{0}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{0}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
        "6".repeat(64)
    );
    seeds.push(amd64.into_bytes());
    seeds.push(
        format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{}","sha256:{}"]}}}}"#,
            "a".repeat(64),
            "b".repeat(64)
        )
        .into_bytes(),
    );
    seeds
}

pub fn trusted_root_seeds() -> Vec<Vec<u8>> {
    [
        "testvectors/trust/sigstore-public-good/trusted_root.json",
        "generated/trust/trusted_root.json",
        // The built-in public-good root (Rekor v2 Ed25519 key, keyDetails, TSA).
        "../../daemon/trust/sigstore-public-good/trusted_root.json",
    ]
    .iter()
    .filter_map(|rel| std::fs::read(fixtures().join(rel)).ok())
    .collect()
}
