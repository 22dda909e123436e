//! Trust material: CAs, transparency-log keys and CT-log keys, from sigstore's
//! `trusted_root.json` and/or PEM files, so verification runs fully offline.

use base64::Engine;
use serde::Deserialize;

use super::cert::{Cert, TrustAnchor};
use super::error::VerifyError;
use super::keys::PublicKey;
use super::time::parse_rfc3339;
use super::witness::Witnesses;

/// Largest trusted_root.json we read; the public-good one is ~10 KiB.
pub const MAX_TRUSTED_ROOT_BYTES: usize = 4 << 20;

/// A log key (Rekor or CT) with its id and validity window.
#[derive(Debug, Clone)]
pub struct LogKey {
    pub log_id: [u8; 32],
    pub key: PublicKey,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
}

impl LogKey {
    /// A key with no window; its log id is SHA-256 of its SubjectPublicKeyInfo.
    pub fn new(key: PublicKey) -> Self {
        LogKey {
            log_id: key.log_id(),
            key,
            valid_from: None,
            valid_until: None,
        }
    }
    /// Whether the key was valid for entries integrated at `at`.
    pub fn valid_at(&self, at: i64) -> bool {
        self.valid_from.is_none_or(|s| at >= s) && self.valid_until.is_none_or(|e| at <= e)
    }
}

/// Everything a verifier trusts besides the signer keys/identities themselves.
#[derive(Debug, Clone, Default)]
pub struct TrustMaterial {
    pub cas: Vec<TrustAnchor>,
    /// Untrusted intermediates offered for chain building (containers-policy.json's
    /// `caIntermediatesPath`); they only help link a leaf to `cas`.
    pub intermediates: Vec<Cert>,
    pub tlogs: Vec<LogKey>,
    pub ctlogs: Vec<LogKey>,
    /// RFC 3161 timestamping authorities (their chains' certificates, as anchors).
    pub tsas: Vec<TrustAnchor>,
    /// Log entries of the trusted root whose key imagegate cannot use (an encoding or
    /// algorithm it does not implement, or a key that contradicts its `keyDetails`). They are
    /// kept, not dropped: evidence naming one of these log ids is refused with the reason.
    pub unusable_tlogs: Vec<UnusableLog>,
    /// CT logs likewise.
    pub unusable_ctlogs: Vec<UnusableLog>,
    /// A placeholder for the Sigstore public-good root kept current through TUF (a policy's
    /// `trusted_root = "public-good"`): empty itself, so verifying with it directly fails; the
    /// verdict evaluation swaps in the TUF client's current root (`crate::tuf::resolve`).
    pub public_good: bool,
    /// Witnesses whose cosignatures every checkpoint must carry (a trust entry's `witnesses`);
    /// none by default.
    pub witnesses: Witnesses,
}

/// A log listed in a trusted root whose key cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableLog {
    pub log_id: [u8; 32],
    pub reason: String,
}

impl std::fmt::Display for UnusableLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine;
        write!(
            f,
            "log {} in the trusted root is unusable: {}",
            base64::engine::general_purpose::STANDARD.encode(self.log_id),
            self.reason
        )
    }
}

fn tr_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::TrustRoot {
        detail: detail.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawCa>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
    #[serde(default)]
    timestamp_authorities: Vec<RawCa>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: String,
    #[serde(default)]
    key_details: Option<String>,
    #[serde(default)]
    valid_for: Option<RawWindow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
struct RawWindow {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCa {
    cert_chain: RawChain,
    #[serde(default)]
    valid_for: Option<RawWindow>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

/// A `validFor` TimeRange: `start` is required by the specification (a range without one is
/// malformed, not unbounded); `end` is optional; both bounds are inclusive. An absent `validFor`
/// is unbounded. `what` names the entry in errors.
fn window(
    w: &Option<RawWindow>,
    what: &dyn Fn() -> String,
) -> Result<(Option<i64>, Option<i64>), VerifyError> {
    let Some(w) = w else { return Ok((None, None)) };
    let p = |s: &Option<String>| -> Result<Option<i64>, VerifyError> {
        s.as_deref()
            .map(|s| {
                parse_rfc3339(s).ok_or_else(|| tr_err(format!("{}: bad timestamp {s:?}", what())))
            })
            .transpose()
    };
    let start = p(&w.start)?;
    if start.is_none() {
        return Err(tr_err(format!(
            "{}: validFor has no start (required)",
            what()
        )));
    }
    let end = p(&w.end)?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(tr_err(format!(
                "{}: validFor ends before it starts",
                what()
            )));
        }
    }
    Ok((start, end))
}

fn b64(s: &str) -> Result<Vec<u8>, VerifyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(tr_err)
}

/// Decode a trusted-root public key by its `keyDetails` (sigstore's PublicKeyDetails): PKCS#1
/// for `PKCS1_RSA_PKCS1V5`, SubjectPublicKeyInfo for the `PKIX_*` kinds (and when absent). The
/// key must be of the kind named. `Err` is a reason the entry is unusable.
fn decode_key(raw: &RawKey) -> Result<PublicKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&raw.raw_bytes)
        .map_err(|e| format!("key is not base64: {e}"))?;
    let details = raw.key_details.as_deref();
    let key = match details {
        Some("PKCS1_RSA_PKCS1V5") => PublicKey::from_pkcs1_rsa_der(&bytes),
        Some("PKCS1_RSA_PSS") => {
            PublicKey::from_pkcs1_rsa_der(&bytes).and_then(PublicKey::into_rsa_pss)
        }
        Some(d) if d.starts_with("PKIX_RSA_PSS") => {
            PublicKey::from_spki_der(&bytes).and_then(PublicKey::into_rsa_pss)
        }
        Some(d) if d.starts_with("PKIX_") => PublicKey::from_spki_der(&bytes),
        None => PublicKey::from_spki_der(&bytes),
        Some(other) => return Err(format!("key type {other} is not supported")),
    }
    .map_err(|e| e.to_string())?;
    if let Some(d) = details {
        if !key.matches_key_details(d) {
            return Err(format!(
                "key is {} but keyDetails says {d} (or that kind is not supported)",
                key.algorithm()
            ));
        }
    }
    Ok(key)
}

fn log_key(raw: &RawLog, what: &str) -> Result<Result<LogKey, UnusableLog>, VerifyError> {
    let id = b64(&raw.log_id.key_id)?;
    let log_id: [u8; 32] = id
        .try_into()
        .map_err(|_| tr_err(format!("{what}: log id is not 32 bytes")))?;
    let name = || format!("{what} {}", raw.log_id.key_id);
    let (valid_from, valid_until) = window(&raw.public_key.valid_for, &name)?;
    Ok(match decode_key(&raw.public_key) {
        Ok(key) => Ok(LogKey {
            log_id,
            key,
            valid_from,
            valid_until,
        }),
        Err(reason) => Err(UnusableLog { log_id, reason }),
    })
}

impl TrustMaterial {
    /// Parse sigstore's `trusted_root.json` (media type `application/vnd.dev.sigstore.trustedroot...`).
    pub fn from_trusted_root_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_TRUSTED_ROOT_BYTES {
            return Err(tr_err("trusted_root.json is too large"));
        }
        // Parse fully first: serde skips fields it does not know without checking them (invalid
        // UTF-8 there passed), but a trust root must be valid JSON throughout, as a bundle must.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(tr_err)?;
        let raw: RawRoot = serde_json::from_value(value).map_err(tr_err)?;
        if !raw
            .media_type
            .starts_with("application/vnd.dev.sigstore.trustedroot")
        {
            return Err(tr_err(format!("unexpected mediaType {:?}", raw.media_type)));
        }
        let mut tm = TrustMaterial::default();
        for l in &raw.tlogs {
            match log_key(l, "transparency log")? {
                Ok(k) => tm.tlogs.push(k),
                Err(u) => {
                    tracing::warn!(log = %u, "transparency log of the trusted root ignored");
                    tm.unusable_tlogs.push(u)
                }
            }
        }
        for l in &raw.ctlogs {
            match log_key(l, "CT log")? {
                Ok(k) => tm.ctlogs.push(k),
                Err(u) => {
                    tracing::warn!(log = %u, "CT log of the trusted root ignored");
                    tm.unusable_ctlogs.push(u)
                }
            }
        }
        for (i, ca) in raw.timestamp_authorities.iter().enumerate() {
            let (from, until) = window(&ca.valid_for, &|| format!("timestamp authority {i}"))?;
            if ca.cert_chain.certificates.is_empty() {
                return Err(tr_err("timestamp authority with an empty chain"));
            }
            for c in &ca.cert_chain.certificates {
                let cert = Cert::from_der(&b64(&c.raw_bytes)?, "trusted_root.json TSA")?;
                tm.tsas.push(TrustAnchor {
                    cert,
                    valid_from: from,
                    valid_until: until,
                });
            }
        }
        for (i, ca) in raw.certificate_authorities.iter().enumerate() {
            let (from, until) = window(&ca.valid_for, &|| format!("certificate authority {i}"))?;
            if ca.cert_chain.certificates.is_empty() {
                return Err(tr_err("certificate authority with an empty chain"));
            }
            for c in &ca.cert_chain.certificates {
                let cert = Cert::from_der(&b64(&c.raw_bytes)?, "trusted_root.json CA")?;
                tm.cas.push(TrustAnchor {
                    cert,
                    valid_from: from,
                    valid_until: until,
                });
            }
        }
        Ok(tm)
    }

    /// Trust every certificate in a PEM bundle as a CA (roots or directly trusted intermediates).
    pub fn add_ca_pem(&mut self, pem: &str) -> Result<(), VerifyError> {
        for cert in Cert::all_from_pem(pem, "trusted CA").map_err(tr_err)? {
            self.cas.push(TrustAnchor::new(cert));
        }
        Ok(())
    }

    /// Offer the certificates of a PEM bundle as (untrusted) intermediates for chain building.
    pub fn add_intermediates_pem(&mut self, pem: &str) -> Result<(), VerifyError> {
        self.intermediates
            .extend(Cert::all_from_pem(pem, "intermediate CA").map_err(tr_err)?);
        Ok(())
    }

    /// Trust the certificates of a PEM bundle as timestamping authorities (leaf and/or roots).
    pub fn add_tsa_pem(&mut self, pem: &str) -> Result<(), VerifyError> {
        for cert in Cert::all_from_pem(pem, "timestamping authority").map_err(tr_err)? {
            self.tsas.push(TrustAnchor::new(cert));
        }
        Ok(())
    }

    /// Trust a Rekor public key (PEM).
    pub fn add_rekor_key_pem(&mut self, pem: &str) -> Result<(), VerifyError> {
        for k in PublicKey::all_from_pem(pem).map_err(tr_err)? {
            self.tlogs.push(LogKey::new(k));
        }
        Ok(())
    }

    /// Trust a CT log public key (PEM).
    pub fn add_ctlog_key_pem(&mut self, pem: &str) -> Result<(), VerifyError> {
        for k in PublicKey::all_from_pem(pem).map_err(tr_err)? {
            self.ctlogs.push(LogKey::new(k));
        }
        Ok(())
    }

    /// Merge another set of trust material into this one.
    pub fn extend(&mut self, other: TrustMaterial) {
        self.cas.extend(other.cas);
        self.intermediates.extend(other.intermediates);
        self.tlogs.extend(other.tlogs);
        self.ctlogs.extend(other.ctlogs);
        self.tsas.extend(other.tsas);
        self.unusable_tlogs.extend(other.unusable_tlogs);
        self.unusable_ctlogs.extend(other.unusable_ctlogs);
    }

    /// Why a transparency log of this trust material cannot be used, if it is listed unusable.
    pub fn unusable_tlog(&self, log_id: &[u8]) -> Option<&UnusableLog> {
        self.unusable_tlogs
            .iter()
            .find(|u| u.log_id.as_slice() == log_id)
    }

    /// Why a CT log cannot be used, if it is listed unusable.
    pub fn unusable_ctlog(&self, log_id: &[u8]) -> Option<&UnusableLog> {
        self.unusable_ctlogs
            .iter()
            .find(|u| u.log_id.as_slice() == log_id)
    }

    /// Find a transparency log key by id.
    pub fn tlog(&self, log_id: &[u8]) -> Option<&LogKey> {
        self.tlogs.iter().find(|k| k.log_id.as_slice() == log_id)
    }
}

#[cfg(test)]
mod invalid_json_tests {
    use super::*;

    /// Found by the `trusted_root` fuzz target: invalid UTF-8 inside a field imagegate does not
    /// read was accepted, so a file that is not JSON passed as a trust root.
    #[test]
    fn a_trust_root_must_be_valid_json_throughout() {
        let good = br#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","unknown":"ok"}"#;
        assert!(TrustMaterial::from_trusted_root_json(good).is_ok());
        let mut bad = good.to_vec();
        let at = bad.len() - 4;
        bad[at] = 0xf5; // not UTF-8, in the unknown field's string
        let error = TrustMaterial::from_trusted_root_json(&bad).expect_err("invalid JSON accepted");
        assert!(error.to_string().contains("unicode"), "{error}");
    }
}

#[cfg(test)]
mod key_encoding_tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn spki(pem: &str) -> Vec<u8> {
        PublicKey::from_pem(pem)
            .expect("fixture key")
            .spki_der()
            .to_vec()
    }

    fn pkcs1(spki_der: &[u8]) -> Vec<u8> {
        use der::Decode;
        let info = spki::SubjectPublicKeyInfoRef::from_der(spki_der).expect("SPKI");
        info.subject_public_key.raw_bytes().to_vec()
    }

    fn log(id: u8, key: &[u8], details: &str, valid_for: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "baseUrl": "https://log.example",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": STANDARD.encode(key), "keyDetails": details, "validFor": valid_for},
            "logId": {"keyId": STANDARD.encode([id; 32])},
        })
    }

    fn root(tlogs: Vec<serde_json::Value>, ctlogs: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": tlogs, "ctlogs": ctlogs,
        }))
        .expect("JSON")
    }

    const RSA2048: &str = include_str!("../../../tests/fixtures/generated/legacy-keys/rsa2048.pub");
    const P256: &str = include_str!("../../../tests/fixtures/generated/legacy-keys/p256.pub");
    const ED25519: &str = include_str!("../../../tests/fixtures/generated/legacy-keys/ed25519.pub");

    #[test]
    fn every_key_encoding_of_the_spec_is_read_by_its_key_details() {
        let start = serde_json::json!({"start": "2021-01-01T00:00:00Z"});
        let rsa = spki(RSA2048);
        let tm = TrustMaterial::from_trusted_root_json(&root(
            vec![
                log(1, &spki(ED25519), "PKIX_ED25519", start.clone()),
                log(2, &spki(P256), "PKIX_ECDSA_P256_SHA_256", start.clone()),
                log(6, &rsa, "PKIX_RSA_PSS_2048_SHA256", start.clone()),
                log(7, &pkcs1(&rsa), "PKCS1_RSA_PSS", start.clone()),
            ],
            vec![
                log(3, &pkcs1(&rsa), "PKCS1_RSA_PKCS1V5", start.clone()),
                log(4, &rsa, "PKIX_RSA_PKCS1V15_2048_SHA256", start.clone()),
                log(5, &rsa, "PKIX_RSA_PKCS1V5", start),
            ],
        ))
        .expect("root");
        assert_eq!(tm.tlogs.len(), 4);
        assert_eq!(tm.ctlogs.len(), 3);
        assert!(tm.unusable_tlogs.is_empty() && tm.unusable_ctlogs.is_empty());
        // RSA-PSS keys verify PSS signatures (verify/keys.rs tests), named so.
        assert_eq!(tm.tlogs[2].key.algorithm(), "rsa-pss");
        assert_eq!(tm.tlogs[3].key.algorithm(), "rsa-pss");
        assert_eq!(tm.ctlogs[1].key.algorithm(), "rsa");
        // A PKCS#1 key is the same key as its SPKI form: same fingerprint, same CT log id.
        assert_eq!(tm.ctlogs[0].key.spki_der(), rsa.as_slice());
        assert_eq!(tm.ctlogs[0].key.log_id(), tm.ctlogs[1].key.log_id());
    }

    #[test]
    fn unusable_keys_are_kept_with_their_log_id_and_reason() {
        let start = serde_json::json!({"start": "2021-01-01T00:00:00Z"});
        let rsa = spki(RSA2048);
        let tm = TrustMaterial::from_trusted_root_json(&root(
            vec![
                log(1, &spki(P256), "PKIX_ECDSA_P384_SHA_384", start.clone()),
                log(2, &spki(P256), "LMS_SHA256", start.clone()),
                log(3, b"not a key", "PKIX_ED25519", start.clone()),
                log(7, &spki(ED25519), "PKIX_ED25519", start.clone()),
            ],
            vec![
                log(4, &rsa, "PKIX_RSA_PKCS1V15_3072_SHA256", start.clone()),
                // SPKI bytes declared as PKCS#1: not a PKCS#1 key.
                log(5, &rsa, "PKCS1_RSA_PKCS1V5", start),
            ],
        ))
        .expect("a root with unusable entries still loads");
        assert_eq!(tm.tlogs.len(), 1);
        assert_eq!(tm.unusable_tlogs.len(), 3);
        assert_eq!(tm.unusable_ctlogs.len(), 2);
        let u = tm.unusable_tlog(&[2; 32]).expect("listed");
        assert!(u.reason.contains("LMS_SHA256"), "{u}");
        assert!(
            u.to_string().contains(&STANDARD.encode([2u8; 32])),
            "names the log: {u}"
        );
        assert!(tm
            .unusable_tlog(&[1; 32])
            .expect("listed")
            .reason
            .contains("PKIX_ECDSA_P384_SHA_384"));
        assert!(tm.unusable_ctlog(&[4; 32]).is_some() && tm.unusable_ctlog(&[5; 32]).is_some());
        assert!(tm.tlog(&[1; 32]).is_none(), "an unusable key is never used");
    }

    #[test]
    fn valid_for_needs_a_start_and_both_bounds_are_inclusive() {
        let key = spki(P256);
        let no_start = root(
            vec![log(
                9,
                &key,
                "PKIX_ECDSA_P256_SHA_256",
                serde_json::json!({"end": "2030-01-01T00:00:00Z"}),
            )],
            vec![],
        );
        let err = TrustMaterial::from_trusted_root_json(&no_start).expect_err("no start");
        assert!(err.to_string().contains("no start"), "{err}");
        assert!(
            err.to_string().contains(&STANDARD.encode([9u8; 32])),
            "names the log: {err}"
        );
        let reversed = root(
            vec![log(
                9,
                &key,
                "PKIX_ECDSA_P256_SHA_256",
                serde_json::json!({"start": "2030-01-01T00:00:00Z", "end": "2020-01-01T00:00:00Z"}),
            )],
            vec![],
        );
        assert!(TrustMaterial::from_trusted_root_json(&reversed).is_err());
        let bounded = root(
            vec![log(
                9,
                &key,
                "PKIX_ECDSA_P256_SHA_256",
                serde_json::json!({"start": "2023-07-12T15:00:00Z", "end": "2023-07-12T15:56:36Z"}),
            )],
            vec![],
        );
        let tm = TrustMaterial::from_trusted_root_json(&bounded).expect("root");
        let k = &tm.tlogs[0];
        let (start, end) = (1_689_174_000, 1_689_177_396);
        assert!(k.valid_at(start) && k.valid_at(end));
        assert!(!k.valid_at(start - 1) && !k.valid_at(end + 1));
        // No validFor at all is unbounded (the spec makes it optional), unlike a range without start.
        let unbounded = root(
            vec![log(
                9,
                &key,
                "PKIX_ECDSA_P256_SHA_256",
                serde_json::Value::Null,
            )],
            vec![],
        );
        assert!(TrustMaterial::from_trusted_root_json(&unbounded)
            .expect("root")
            .tlogs[0]
            .valid_at(0));
    }
}
