//! Sigstore bundles (v0.1-v0.3; cosign v3 stores v0.3 as an OCI referrer): a DSSE envelope with
//! an in-toto statement about the image digest, or a message signature over the digest, plus the
//! verification material (certificate or key hint) and transparency-log evidence.

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::authority::{
    check_certificate, verify_with_cert, Authority, Evidence, SignatureFormat, Signer, SignerInfo,
    Verified,
};
use super::cert::Cert;
use super::error::VerifyError;
use super::keys::PublicKey;
use super::merkle::{leaf_hash, verify_checkpoint, verify_inclusion};
use super::rekor::{match_entry_body, verify_set, DsseExpectation, ExpectedEntry, SetPayload};
use super::timestamp::verify_timestamp;

/// Largest bundle we parse.
pub const MAX_BUNDLE_BYTES: usize = 2 << 20;
/// Media type of a v0.3 bundle (also the OCI layer media type).
pub const BUNDLE_V03_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const BUNDLE_V01: &str = "application/vnd.dev.sigstore.bundle+json;version=0.1";
const BUNDLE_V02: &str = "application/vnd.dev.sigstore.bundle+json;version=0.2";
const BUNDLE_V03_ALT: &str = "application/vnd.dev.sigstore.bundle+json;version=0.3";
/// DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Predicate type of a cosign image signature (as opposed to an attestation).
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

fn fmt_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::BundleFormat {
        detail: detail.to_string(),
    }
}

/// Standard base64 of a bundle's bytes field. Line breaks are skipped, as protobuf JSON decoders
/// (Go's base64, which other clients use) skip them: `base64` tools wrap at 76 columns.
fn b64(s: &str, what: &str) -> Result<Vec<u8>, VerifyError> {
    let decode = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| fmt_err(format!("{what} is not base64: {e}")))
    };
    if s.contains(['\n', '\r']) {
        decode(&s.replace(['\n', '\r'], ""))
    } else {
        decode(s)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: Material,
    dsse_envelope: Option<Envelope>,
    message_signature: Option<MessageSignature>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<Chain>,
    public_key: Option<KeyHint>,
    #[serde(default)]
    tlog_entries: Vec<TlogEntry>,
    #[serde(default)]
    timestamp_verification_data: Option<TimestampData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampData {
    #[serde(default)]
    rfc3161_timestamps: Vec<SignedTimestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedTimestamp {
    signed_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct Chain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct KeyHint {
    #[serde(default)]
    hint: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogEntry {
    log_index: String,
    log_id: LogId,
    kind_version: KindVersion,
    /// Absent (zero) for Rekor v2 entries, which have no SET.
    #[serde(default)]
    integrated_time: Option<String>,
    inclusion_promise: Option<Promise>,
    inclusion_proof: Option<Proof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
struct KindVersion {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Promise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Proof {
    log_index: String,
    root_hash: String,
    tree_size: String,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: Option<Checkpoint>,
}

#[derive(Deserialize)]
struct Checkpoint {
    envelope: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<DsseSig>,
}

#[derive(Deserialize)]
struct DsseSig {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: MessageDigest,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// DSSE pre-authentication encoding: what a DSSE signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn parse_u64(s: &str, what: &str) -> Result<u64, VerifyError> {
    s.parse()
        .map_err(|_| fmt_err(format!("{what} {s:?} is not a number")))
}

/// A log index: an int64 in the bundle's schema, which must not be negative.
fn parse_log_index(s: &str, what: &str) -> Result<i64, VerifyError> {
    let i: i64 = s
        .parse()
        .map_err(|_| fmt_err(format!("{what} {s:?} is not a number")))?;
    if i < 0 {
        return Err(fmt_err(format!("{what} {i} is negative")));
    }
    Ok(i)
}

/// What the bundle must be about.
#[derive(Debug, Clone)]
pub struct BundleExpectation<'a> {
    /// `sha256:<hex>` of the image manifest.
    pub digest: &'a str,
    /// Required in-toto predicate type; `None` means cosign's image signature predicate.
    pub predicate_type: Option<&'a str>,
}

/// Verify a bundle (JSON) against an authority: an image signature (the in-toto predicate must
/// be `want.predicate_type`, by default cosign's image signature predicate).
pub fn verify_bundle(
    json: &[u8],
    auth: &Authority,
    want: &BundleExpectation<'_>,
) -> Result<Verified, VerifyError> {
    verify(json, auth, want, false)
}

/// Verify a bundle over an arbitrary artifact (the sigstore client protocol's `verify-bundle
/// FILE_OR_DIGEST`): as [`verify_bundle`], except that without `want.predicate_type` any in-toto
/// predicate type is accepted (the artifact must still be a subject of the statement).
pub fn verify_artifact_bundle(
    json: &[u8],
    auth: &Authority,
    want: &BundleExpectation<'_>,
) -> Result<Verified, VerifyError> {
    verify(json, auth, want, true)
}

/// Whether a log entry of `kind`/`version` can record a signature of `format`. Rekor v1:
/// `hashedrekord` 0.0.1 for message signatures, `dsse` 0.0.1 or `intoto` 0.0.2 for DSSE. Rekor
/// v2: `hashedrekord` 0.0.2 for both (for DSSE over the PAE), `dsse` 0.0.2 for DSSE.
fn entry_kind_allowed(format: SignatureFormat, kind: &str, version: &str) -> bool {
    match format {
        SignatureFormat::BundleMessageSignature => {
            matches!((kind, version), ("hashedrekord", "0.0.1" | "0.0.2"))
        }
        SignatureFormat::BundleDsse => matches!(
            (kind, version),
            ("dsse", "0.0.1") | ("intoto", "0.0.2") | ("dsse" | "hashedrekord", "0.0.2")
        ),
        SignatureFormat::Legacy => false,
    }
}

/// Rekor v2 entries: no integrated time, no SET; an inclusion proof with a checkpoint, and the
/// signing time from RFC 3161 timestamps.
fn is_rekor_v2_entry(kind: &str, version: &str) -> bool {
    matches!((kind, version), ("dsse" | "hashedrekord", "0.0.2"))
}

fn verify(
    json: &[u8],
    auth: &Authority,
    want: &BundleExpectation<'_>,
    any_predicate: bool,
) -> Result<Verified, VerifyError> {
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(fmt_err("bundle too large"));
    }
    // Parse fully first: serde skips ignored fields leniently, but a bundle must be valid JSON
    // throughout, including the parts imagegate does not use.
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| fmt_err(format!("malformed bundle: {e}")))?;
    let bundle: RawBundle =
        serde_json::from_value(value).map_err(|e| fmt_err(format!("malformed bundle: {e}")))?;
    let version = match bundle.media_type.as_str() {
        BUNDLE_V01 => 1,
        BUNDLE_V02 => 2,
        BUNDLE_V03_MEDIA_TYPE | BUNDLE_V03_ALT => 3,
        other => return Err(fmt_err(format!("unsupported bundle mediaType {other:?}"))),
    };
    let expected_hex =
        want.digest
            .strip_prefix("sha256:")
            .ok_or_else(|| VerifyError::SubjectDigest {
                expected: want.digest.to_string(),
            })?;
    let expected_bytes = hex::decode(expected_hex).map_err(|_| VerifyError::SubjectDigest {
        expected: want.digest.to_string(),
    })?;

    // Signer material.
    let m = &bundle.verification_material;
    let (leaf, intermediates) = match (&m.certificate, &m.x509_certificate_chain, &m.public_key) {
        (Some(c), None, None) => (
            Some(Cert::from_der(
                &b64(&c.raw_bytes, "certificate")?,
                "bundle certificate",
            )?),
            Vec::new(),
        ),
        (None, Some(ch), None) => {
            let mut certs = ch
                .certificates
                .iter()
                .map(|c| {
                    Cert::from_der(
                        &b64(&c.raw_bytes, "certificate")?,
                        "bundle certificate chain",
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            if certs.is_empty() {
                return Err(fmt_err("empty certificate chain"));
            }
            let leaf = certs.remove(0);
            // The chain must end below a trust anchor: a root shipped in the bundle would only
            // be a claim, and accepting one invites confusing it with the trusted root.
            if certs.iter().any(Cert::is_self_issued) {
                return Err(VerifyError::CertChain {
                    detail:
                        "the bundle's certificate chain includes a root (self-issued) certificate"
                            .into(),
                });
            }
            (Some(leaf), certs)
        }
        (None, None, Some(_)) => (None, Vec::new()),
        _ => {
            return Err(fmt_err(
                "verification material must be exactly one of certificate, chain, public key",
            ))
        }
    };

    // Content: what was signed, and the signature over it, checked with the signer's key.
    let mut dsse_parts: Option<(String, [u8; 32], Vec<u8>)> = None;
    let (payload_sha256, sig, format, key_used): (
        [u8; 32],
        Vec<u8>,
        SignatureFormat,
        Option<PublicKey>,
    ) = match (&bundle.dsse_envelope, &bundle.message_signature) {
        (Some(env), None) => {
            if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
                return Err(fmt_err(format!(
                    "unsupported DSSE payloadType {:?}",
                    env.payload_type
                )));
            }
            if env.signatures.len() != 1 {
                return Err(fmt_err(format!(
                    "DSSE envelope has {} signatures, expected 1",
                    env.signatures.len()
                )));
            }
            let payload = b64(&env.payload, "DSSE payload")?;
            let sig = b64(&env.signatures[0].sig, "DSSE signature")?;
            let pae_bytes = pae(&env.payload_type, &payload);
            let key = verify_content(auth, leaf.as_ref(), &pae_bytes, &sig, None)?;
            dsse_parts = Some((
                env.payload_type.clone(),
                Sha256::digest(&pae_bytes).into(),
                payload.clone(),
            ));
            let st: Statement = serde_json::from_slice(&payload)
                .map_err(|e| fmt_err(format!("in-toto statement: {e}")))?;
            if st.kind != "https://in-toto.io/Statement/v1"
                && st.kind != "https://in-toto.io/Statement/v0.1"
            {
                return Err(fmt_err(format!(
                    "unsupported statement _type {:?}",
                    st.kind
                )));
            }
            let want_pred = match (want.predicate_type, any_predicate) {
                (Some(p), _) => Some(p),
                (None, true) => None,
                (None, false) => Some(COSIGN_SIGN_PREDICATE),
            };
            if let Some(want_pred) = want_pred {
                if st.predicate_type != want_pred {
                    return Err(fmt_err(format!(
                        "predicateType {:?} is not {want_pred:?}",
                        st.predicate_type
                    )));
                }
            }
            if !st
                .subject
                .iter()
                .any(|s| s.digest.get("sha256").map(String::as_str) == Some(expected_hex))
            {
                return Err(VerifyError::SubjectDigest {
                    expected: want.digest.to_string(),
                });
            }
            (
                Sha256::digest(&payload).into(),
                sig,
                SignatureFormat::BundleDsse,
                key,
            )
        }
        (None, Some(ms)) => {
            if ms.message_digest.algorithm != "SHA2_256" {
                return Err(fmt_err(format!(
                    "unsupported message digest {:?}",
                    ms.message_digest.algorithm
                )));
            }
            let digest = b64(&ms.message_digest.digest, "message digest")?;
            if digest != expected_bytes {
                return Err(VerifyError::SubjectDigest {
                    expected: want.digest.to_string(),
                });
            }
            let sig = b64(&ms.signature, "message signature")?;
            let key = verify_content(auth, leaf.as_ref(), &digest, &sig, Some(()))?;
            let d: [u8; 32] = digest
                .try_into()
                .map_err(|_| fmt_err("message digest is not 32 bytes"))?;
            (d, sig, SignatureFormat::BundleMessageSignature, key)
        }
        _ => {
            return Err(fmt_err(
                "bundle must hold exactly one of dsseEnvelope, messageSignature",
            ))
        }
    };

    let signer_der = match (&leaf, &key_used) {
        (Some(l), _) => l.der().to_vec(),
        (None, Some(k)) => k.spki_der().to_vec(),
        (None, None) => return Err(fmt_err("no signer")),
    };

    // Transparency log.
    let mut signed_at = None;
    let mut tlog_index = None;
    let mut evidence = Vec::new();
    // The log key of an entry without SET: it must have been valid at the signing times.
    let mut unpromised_log_key = None;
    if auth.require_tlog {
        if m.tlog_entries.len() != 1 {
            return Err(if m.tlog_entries.is_empty() {
                VerifyError::TlogMissing
            } else {
                fmt_err(format!("{} tlog entries, expected 1", m.tlog_entries.len()))
            });
        }
        let e = &m.tlog_entries[0];
        let (kind, kind_version) = (
            e.kind_version.kind.as_str(),
            e.kind_version.version.as_str(),
        );
        if !entry_kind_allowed(format, kind, kind_version) {
            return Err(fmt_err(format!(
                "tlog entry kind {kind}/{kind_version} cannot record this signature"
            )));
        }
        let rekor_v2 = is_rekor_v2_entry(kind, kind_version);
        let log_index = parse_log_index(&e.log_index, "logIndex")?;
        let body = b64(&e.canonicalized_body, "canonicalizedBody")?;
        match_entry_body(
            &e.canonicalized_body,
            kind,
            kind_version,
            &ExpectedEntry {
                payload_sha256,
                signature: &sig,
                signer_der: &signer_der,
                signer_is_cert: leaf.is_some(),
                dsse: dsse_parts
                    .as_ref()
                    .map(|(payload_type, pae_sha256, payload)| DsseExpectation {
                        payload_type,
                        pae_sha256: *pae_sha256,
                        payload,
                    }),
            },
        )?;
        let log_id = b64(&e.log_id.key_id, "logId")?;
        let integrated: Option<i64> = e
            .integrated_time
            .as_deref()
            .map(|t| parse_u64(t, "integratedTime").map(|t| t as i64))
            .transpose()?
            .filter(|t| *t != 0);
        // The SET is what makes integratedTime trustworthy.
        let key = match &e.inclusion_promise {
            Some(_) if rekor_v2 => {
                return Err(fmt_err(format!(
                    "{kind}/{kind_version} entry with an inclusion promise (Rekor v2 has no SET)"
                )))
            }
            Some(p) => {
                let integrated = integrated.ok_or_else(|| VerifyError::TlogSet {
                    detail: "inclusion promise without integratedTime".into(),
                })?;
                let set_payload = SetPayload {
                    body: e.canonicalized_body.clone(),
                    integrated_time: integrated,
                    log_id: hex::encode(&log_id),
                    log_index,
                };
                let k = verify_set(&set_payload, &p.signed_entry_timestamp, &auth.trust)?;
                signed_at = Some(integrated);
                k
            }
            None if version == 1 => {
                return Err(VerifyError::TlogSet {
                    detail: "v0.1 bundle without inclusion promise".into(),
                })
            }
            None => {
                let k = auth.trust.tlog(&log_id).ok_or_else(|| {
                    match auth.trust.unusable_tlog(&log_id) {
                        Some(u) => VerifyError::TrustRoot {
                            detail: u.to_string(),
                        },
                        None => VerifyError::TlogKeyUnknown {
                            log_id: hex::encode(&log_id),
                        },
                    }
                })?;
                unpromised_log_key = Some(k);
                k
            }
        };
        let mut witnessed_by = Vec::new();
        match &e.inclusion_proof {
            Some(p) => {
                let index = parse_log_index(&p.log_index, "inclusion proof logIndex")?;
                // Rekor v2 has one tree per log: the entry's index is the proof's (v1 entries
                // carry a global index, bound by the SET, and a per-shard proof index).
                if rekor_v2 && index != log_index {
                    return Err(VerifyError::TlogProof {
                        detail: format!(
                            "entry logIndex {log_index} is not the inclusion proof's {index}"
                        ),
                    });
                }
                let index = index as u64;
                let size = parse_u64(&p.tree_size, "treeSize")?;
                let root: [u8; 32] = b64(&p.root_hash, "rootHash")?.try_into().map_err(|_| {
                    VerifyError::TlogProof {
                        detail: "rootHash is not 32 bytes".into(),
                    }
                })?;
                let hashes = p
                    .hashes
                    .iter()
                    .map(|h| {
                        b64(h, "proof hash")?
                            .try_into()
                            .map_err(|_| VerifyError::TlogProof {
                                detail: "proof hash is not 32 bytes".into(),
                            })
                    })
                    .collect::<Result<Vec<[u8; 32]>, _>>()?;
                verify_inclusion(leaf_hash(&body), index, size, &hashes, &root)?;
                let cp = p
                    .checkpoint
                    .as_ref()
                    .ok_or_else(|| VerifyError::TlogProof {
                        detail: "inclusion proof without checkpoint".into(),
                    })?;
                witnessed_by =
                    verify_checkpoint(&cp.envelope, key, &auth.trust.witnesses, size, &root)?;
            }
            None if !auth.trust.witnesses.is_empty() => {
                return Err(VerifyError::TlogProof {
                    detail: "witnesses are required and the bundle has no inclusion proof \
                             (no checkpoint to be cosigned)"
                        .into(),
                })
            }
            None if version >= 2 || rekor_v2 => {
                return Err(VerifyError::TlogProof {
                    detail: "bundle without inclusion proof".into(),
                })
            }
            None => {}
        }
        tlog_index = Some(log_index);
        evidence.push(Evidence::Tlog {
            rekor: if rekor_v2 { 2 } else { 1 },
            entry: format!("{kind}/{kind_version}"),
            log_index,
            integrated_time: signed_at,
            inclusion_proof: e.inclusion_proof.is_some(),
            witnessed_by,
        });
    }

    // RFC 3161 timestamps: verified when the trust material names timestamping authorities (and
    // then each must be valid), otherwise ignored (they add no trust imagegate relies on).
    let mut times: Vec<i64> = signed_at.into_iter().collect();
    if !auth.trust.tsas.is_empty() {
        for t in m
            .timestamp_verification_data
            .iter()
            .flat_map(|d| &d.rfc3161_timestamps)
        {
            let raw = b64(&t.signed_timestamp, "signedTimestamp")?;
            let time = verify_timestamp(&raw, &sig, &auth.trust)?;
            times.push(time);
            evidence.push(Evidence::Timestamp { time });
        }
    }
    // Without a SET the log key's validity window is checked at the timestamps' times.
    if let Some(k) = unpromised_log_key {
        if let Some(t) = times.iter().find(|t| !k.valid_at(**t)) {
            return Err(VerifyError::TlogProof {
                detail: format!(
                    "log key {} was not valid at the signing time {t}",
                    hex::encode(k.log_id)
                ),
            });
        }
    }

    let signer = match (&auth.signer, leaf) {
        (
            Signer::Certificate {
                identities,
                require_sct,
            },
            Some(leaf),
        ) => {
            // The certificate must have been valid at every verified signing time.
            check_certificate(
                &leaf,
                &intermediates,
                &auth.trust,
                identities,
                *require_sct,
                &times,
            )?
        }
        (Signer::Keys(_), None) => SignerInfo::Key {
            fingerprint: key_used.map(|k| k.fingerprint()).unwrap_or_default(),
        },
        _ => return Err(fmt_err("signer material does not match the authority kind")),
    };
    debug!(authority = %auth.name, digest = want.digest, "bundle verified");
    let signed_at = signed_at.or(times.first().copied());
    Ok(Verified {
        authority: auth.name.clone(),
        digest: want.digest.to_string(),
        signer,
        format,
        signed_at,
        tlog_index,
        evidence,
    })
}

/// Verify the bundle's signature with the authority's keys (key hint material) or the leaf
/// certificate's key (certificate material). `prehashed` means `msg` is already a SHA-256 digest.
fn verify_content(
    auth: &Authority,
    leaf: Option<&Cert>,
    msg: &[u8],
    sig: &[u8],
    prehashed: Option<()>,
) -> Result<Option<PublicKey>, VerifyError> {
    match (&auth.signer, leaf) {
        (Signer::Keys(keys), None) => {
            let mut last = VerifyError::SignatureInvalid {
                key: "no configured key".into(),
            };
            for k in keys {
                // Same digest rule as legacy signatures: SHA-256 or the key's natural digest,
                // unless the policy names one.
                let res = match prehashed {
                    Some(()) => k.key.verify_prehash(msg, sig, super::keys::HashAlg::Sha256),
                    None => k.verify(msg, sig),
                };
                match res {
                    Ok(()) => return Ok(Some(k.key.clone())),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        (Signer::Certificate { .. }, Some(leaf)) => {
            match prehashed {
                Some(()) => {
                    leaf.public_key()
                        .verify_prehash(msg, sig, super::keys::HashAlg::Sha256)?
                }
                None => verify_with_cert(leaf, msg, sig)?,
            }
            Ok(None)
        }
        (Signer::Keys(_), Some(_)) => Err(fmt_err(
            "bundle carries a certificate but the authority expects a key",
        )),
        (Signer::Certificate { .. }, None) => Err(VerifyError::CertMissing),
    }
}
