//! Rekor (transparency log v1) evidence: the signed entry timestamp (SET) over an entry, and the
//! check that the entry's body is about *this* signature, payload and signer. A valid SET for
//! some other entry proves nothing about ours, so the body match is as important as the SET.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::VerifyError;
use super::keys::{pem_rfc7468_decode, HashAlg};
use super::trust::{LogKey, TrustMaterial};

/// Largest legacy bundle annotation we parse.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;

/// The `dev.sigstore.cosign/bundle` annotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    pub signed_entry_timestamp: String,
    #[serde(rename = "Payload")]
    pub payload: SetPayload,
}

/// What the SET signs, in canonical field order (sorted keys, as Rekor signs it).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SetPayload {
    pub body: String,
    #[serde(rename = "integratedTime")]
    pub integrated_time: i64,
    #[serde(rename = "logID")]
    pub log_id: String,
    #[serde(rename = "logIndex")]
    pub log_index: i64,
}

fn set_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::TlogSet {
        detail: detail.to_string(),
    }
}

/// Decode base64 the way Go does for cosign annotations: line breaks and spaces are ignored.
pub fn b64decode(s: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned)
        .map_err(|e| e.to_string())
}

impl LegacyBundle {
    /// Parse the annotation value; anything malformed is a SET failure.
    pub fn parse(text: &str) -> Result<Self, VerifyError> {
        if text.len() > MAX_BUNDLE_BYTES {
            return Err(set_err("bundle annotation too large"));
        }
        serde_json::from_str(text).map_err(|e| set_err(format!("unparseable bundle: {e}")))
    }
}

/// Verify a SET over `payload` with the log key its `logID` names. Returns the key used.
pub fn verify_set<'a>(
    payload: &SetPayload,
    set_b64: &str,
    trust: &'a TrustMaterial,
) -> Result<&'a LogKey, VerifyError> {
    let id = hex::decode(&payload.log_id).map_err(|e| set_err(format!("logID is not hex: {e}")))?;
    // Several keys may share a log id across rotations (different validity windows).
    let mut last = VerifyError::TlogKeyUnknown {
        log_id: payload.log_id.clone(),
    };
    for key in trust
        .tlogs
        .iter()
        .filter(|k| k.log_id.as_slice() == id.as_slice())
    {
        match verify_set_with_key(payload, set_b64, key) {
            Ok(()) => return Ok(key),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Verify a SET with a given key (also checks the key's validity window).
pub fn verify_set_with_key(
    payload: &SetPayload,
    set_b64: &str,
    key: &LogKey,
) -> Result<(), VerifyError> {
    let canonical = serde_json::to_vec(payload).map_err(set_err)?;
    let sig = b64decode(set_b64).map_err(|e| set_err(format!("SET is not base64: {e}")))?;
    key.key
        .verify(&canonical, &sig, HashAlg::Sha256)
        .map_err(|_| {
            set_err(format!(
                "SET does not verify with log key {}",
                hex::encode(key.log_id)
            ))
        })?;
    if !key.valid_at(payload.integrated_time) {
        return Err(set_err(
            "log key was not valid at the entry's integrated time",
        ));
    }
    Ok(())
}

/// What the log entry must be about.
pub struct ExpectedEntry<'a> {
    /// SHA-256 of the signed bytes (simple-signing payload, DSSE payload, or the artifact of a
    /// message signature).
    pub payload_sha256: [u8; 32],
    /// Raw signature bytes.
    pub signature: &'a [u8],
    /// DER of the signer: certificate DER, or public key SubjectPublicKeyInfo DER.
    pub signer_der: &'a [u8],
    /// Whether `signer_der` is a certificate (else a public key).
    pub signer_is_cert: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    api_version: String,
    kind: String,
    spec: serde_json::Value,
}

fn field<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_field<'a>(
    v: &'a serde_json::Value,
    path: &[&str],
    name: &'static str,
) -> Result<&'a str, VerifyError> {
    field(v, path)
        .and_then(|x| x.as_str())
        .ok_or(VerifyError::TlogBody { field: name })
}

/// Check that a Rekor entry body (base64 JSON) records `expected`. Supports `hashedrekord`,
/// `rekord` and `dsse` 0.0.1, the kinds cosign writes.
pub fn match_body(body_b64: &str, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
    let raw = b64decode(body_b64).map_err(|_| VerifyError::TlogBody {
        field: "body encoding",
    })?;
    let body: Body =
        serde_json::from_slice(&raw).map_err(|_| VerifyError::TlogBody { field: "body JSON" })?;
    if body.api_version != "0.0.1" {
        return Err(VerifyError::TlogBody {
            field: "apiVersion",
        });
    }
    let payload_hash = hex::encode(expected.payload_sha256);
    let (hash_path, sigs): (&[&str], Vec<(&str, &str)>) = match body.kind.as_str() {
        "hashedrekord" | "rekord" => {
            let sig = str_field(&body.spec, &["signature", "content"], "signature")?;
            let key = str_field(
                &body.spec,
                &["signature", "publicKey", "content"],
                "public key",
            )?;
            (&["data", "hash"], vec![(sig, key)])
        }
        "dsse" => {
            let list = field(&body.spec, &["signatures"])
                .and_then(|v| v.as_array())
                .ok_or(VerifyError::TlogBody {
                    field: "signatures",
                })?;
            let mut sigs = Vec::new();
            for s in list {
                sigs.push((
                    str_field(s, &["signature"], "signature")?,
                    str_field(s, &["verifier"], "verifier")?,
                ));
            }
            (&["payloadHash"], sigs)
        }
        _ => return Err(VerifyError::TlogBody { field: "kind" }),
    };
    let alg_path: Vec<&str> = hash_path.iter().copied().chain(["algorithm"]).collect();
    let value_path: Vec<&str> = hash_path.iter().copied().chain(["value"]).collect();
    let alg = str_field(&body.spec, &alg_path, "hash algorithm")?;
    let value = str_field(&body.spec, &value_path, "hash value")?;
    if alg != "sha256" || !value.eq_ignore_ascii_case(&payload_hash) {
        return Err(VerifyError::TlogBody {
            field: "payload hash",
        });
    }
    if sigs.len() != 1 {
        return Err(VerifyError::TlogBody {
            field: "number of signatures",
        });
    }
    let (sig_b64, signer_b64) = sigs[0];
    let sig = b64decode(sig_b64).map_err(|_| VerifyError::TlogBody { field: "signature" })?;
    if sig != expected.signature {
        return Err(VerifyError::TlogBody { field: "signature" });
    }
    let signer_pem = b64decode(signer_b64).map_err(|_| VerifyError::TlogBody {
        field: "public key",
    })?;
    let (label, der) = pem_rfc7468_decode(&signer_pem).map_err(|_| VerifyError::TlogBody {
        field: "public key",
    })?;
    let label_ok = if expected.signer_is_cert {
        label == "CERTIFICATE"
    } else {
        label == "PUBLIC KEY"
    };
    if !label_ok || der != expected.signer_der {
        return Err(VerifyError::TlogBody {
            field: "signer key or certificate",
        });
    }
    Ok(())
}
