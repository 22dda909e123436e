//! Trust material: CAs, transparency-log keys and CT-log keys, from sigstore's
//! `trusted_root.json` and/or PEM files, so verification runs fully offline.

use base64::Engine;
use serde::Deserialize;

use super::cert::{Cert, TrustAnchor};
use super::error::VerifyError;
use super::keys::PublicKey;
use super::time::parse_rfc3339;

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

fn window(w: &Option<RawWindow>) -> Result<(Option<i64>, Option<i64>), VerifyError> {
    let Some(w) = w else { return Ok((None, None)) };
    let p = |s: &Option<String>| -> Result<Option<i64>, VerifyError> {
        s.as_deref()
            .map(|s| parse_rfc3339(s).ok_or_else(|| tr_err(format!("bad timestamp {s:?}"))))
            .transpose()
    };
    Ok((p(&w.start)?, p(&w.end)?))
}

fn b64(s: &str) -> Result<Vec<u8>, VerifyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(tr_err)
}

fn log_key(raw: &RawLog) -> Result<LogKey, VerifyError> {
    let key = PublicKey::from_spki_der(&b64(&raw.public_key.raw_bytes)?).map_err(tr_err)?;
    let id = b64(&raw.log_id.key_id)?;
    let log_id: [u8; 32] = id
        .try_into()
        .map_err(|_| tr_err("log id is not 32 bytes"))?;
    let (valid_from, valid_until) = window(&raw.public_key.valid_for)?;
    Ok(LogKey {
        log_id,
        key,
        valid_from,
        valid_until,
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
            tm.tlogs.push(log_key(l)?);
        }
        for l in &raw.ctlogs {
            tm.ctlogs.push(log_key(l)?);
        }
        for ca in &raw.timestamp_authorities {
            let (from, until) = window(&ca.valid_for)?;
            for c in &ca.cert_chain.certificates {
                let cert = Cert::from_der(&b64(&c.raw_bytes)?, "trusted_root.json TSA")?;
                tm.tsas.push(TrustAnchor {
                    cert,
                    valid_from: from,
                    valid_until: until,
                });
            }
        }
        for ca in &raw.certificate_authorities {
            let (from, until) = window(&ca.valid_for)?;
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
