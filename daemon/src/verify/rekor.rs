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
    let mut last = match trust.unusable_tlog(&id) {
        Some(u) => VerifyError::TrustRoot {
            detail: u.to_string(),
        },
        None => VerifyError::TlogKeyUnknown {
            log_id: payload.log_id.clone(),
        },
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
    /// For a DSSE envelope: its payload type and SHA-256 of its PAE (what Rekor v2's
    /// `hashedrekord` 0.0.2 records for DSSE).
    pub dsse: Option<DsseExpectation<'a>>,
}

/// The DSSE side of an [`ExpectedEntry`].
pub struct DsseExpectation<'a> {
    pub payload_type: &'a str,
    pub pae_sha256: [u8; 32],
    /// The envelope's payload (intoto 0.0.2 bodies may carry it; it must then be this).
    pub payload: &'a [u8],
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

/// `kind/apiVersion` of an entry body, for naming it (`None` when it does not parse).
pub(crate) fn body_kind(body_b64: &str) -> Option<String> {
    parse_body(body_b64)
        .ok()
        .map(|b| format!("{}/{}", b.kind, b.api_version))
}

fn parse_body(body_b64: &str) -> Result<Body, VerifyError> {
    let raw = b64decode(body_b64).map_err(|_| VerifyError::TlogBody {
        field: "body encoding",
    })?;
    serde_json::from_slice(&raw).map_err(|_| VerifyError::TlogBody { field: "body JSON" })
}

/// Check that a Rekor entry body (base64 JSON) records `expected`. Supports `hashedrekord`,
/// `rekord` and `dsse` 0.0.1, the kinds cosign writes to Rekor v1 (the legacy path).
pub fn match_body(body_b64: &str, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
    let body = parse_body(body_b64)?;
    if body.api_version != "0.0.1" {
        return Err(VerifyError::TlogBody {
            field: "apiVersion",
        });
    }
    match_v1(&body, expected)
}

/// Check a bundle's log entry: the body must be of the `kind`/`version` the bundle declares
/// (`kindVersion`), and record `expected`. Kinds: `hashedrekord`, `rekord`, `dsse` 0.0.1 and
/// `intoto` 0.0.2 (Rekor v1); `hashedrekord` and `dsse` 0.0.2 (Rekor v2). Which kinds suit which
/// signature is the caller's rule.
pub fn match_entry_body(
    body_b64: &str,
    kind: &str,
    version: &str,
    expected: &ExpectedEntry<'_>,
) -> Result<(), VerifyError> {
    let body = parse_body(body_b64)?;
    if body.kind != kind {
        return Err(VerifyError::TlogBody { field: "kind" });
    }
    if body.api_version != version {
        return Err(VerifyError::TlogBody {
            field: "apiVersion",
        });
    }
    match (kind, version) {
        ("hashedrekord" | "rekord" | "dsse", "0.0.1") => match_v1(&body, expected),
        ("intoto", "0.0.2") => match_intoto(&body, expected),
        ("hashedrekord", "0.0.2") => match_hashedrekord_v2(&body, expected),
        ("dsse", "0.0.2") => match_dsse_v2(&body, expected),
        _ => Err(VerifyError::TlogBody { field: "kind" }),
    }
}

fn b64_field(
    v: &serde_json::Value,
    path: &[&str],
    name: &'static str,
) -> Result<Vec<u8>, VerifyError> {
    b64decode(str_field(v, path, name)?).map_err(|_| VerifyError::TlogBody { field: name })
}

/// The signer of a Rekor v2 `Verifier`: `x509Certificate.rawBytes` or `publicKey.rawBytes`
/// (DER), which must be this signature's certificate or key.
fn match_v2_verifier(
    v: &serde_json::Value,
    expected: &ExpectedEntry<'_>,
) -> Result<(), VerifyError> {
    let mismatch = VerifyError::TlogBody {
        field: "signer key or certificate",
    };
    let der = match (
        field(v, &["x509Certificate"]),
        field(v, &["publicKey"]),
        expected.signer_is_cert,
    ) {
        (Some(c), None, true) => b64_field(c, &["rawBytes"], "certificate")?,
        (None, Some(k), false) => b64_field(k, &["rawBytes"], "public key")?,
        _ => return Err(mismatch),
    };
    if der != expected.signer_der {
        return Err(mismatch);
    }
    Ok(())
}

/// A Rekor v2 `HashOutput`: `{"algorithm": "SHA2_256", "digest": base64}`.
fn match_v2_hash(v: Option<&serde_json::Value>, want: &[u8; 32]) -> Result<(), VerifyError> {
    let v = v.ok_or(VerifyError::TlogBody {
        field: "payload hash",
    })?;
    let alg = str_field(v, &["algorithm"], "hash algorithm")?;
    let digest = b64_field(v, &["digest"], "hash value")?;
    if alg != "SHA2_256" || digest != want.as_slice() {
        return Err(VerifyError::TlogBody {
            field: "payload hash",
        });
    }
    Ok(())
}

/// `hashedrekord` 0.0.2 (`spec.hashedRekordV002`): the digest of the signed artifact, or for a
/// DSSE envelope the digest of its PAE; the signature; the verifier.
fn match_hashedrekord_v2(body: &Body, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
    let spec = field(&body.spec, &["hashedRekordV002"]).ok_or(VerifyError::TlogBody {
        field: "hashedRekordV002",
    })?;
    let want = expected
        .dsse
        .as_ref()
        .map_or(expected.payload_sha256, |d| d.pae_sha256);
    match_v2_hash(field(spec, &["data"]), &want)?;
    let sig = b64_field(spec, &["signature", "content"], "signature")?;
    if sig != expected.signature {
        return Err(VerifyError::TlogBody { field: "signature" });
    }
    let verifier = field(spec, &["signature", "verifier"])
        .ok_or(VerifyError::TlogBody { field: "verifier" })?;
    match_v2_verifier(verifier, expected)
}

/// `dsse` 0.0.2 (`spec.dsseV002`): the payload's digest and exactly one signature.
fn match_dsse_v2(body: &Body, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
    let spec =
        field(&body.spec, &["dsseV002"]).ok_or(VerifyError::TlogBody { field: "dsseV002" })?;
    if expected.dsse.is_none() {
        return Err(VerifyError::TlogBody { field: "kind" });
    }
    match_v2_hash(field(spec, &["payloadHash"]), &expected.payload_sha256)?;
    let list = field(spec, &["signatures"])
        .and_then(|v| v.as_array())
        .ok_or(VerifyError::TlogBody {
            field: "signatures",
        })?;
    let [one] = list.as_slice() else {
        return Err(VerifyError::TlogBody {
            field: "number of signatures",
        });
    };
    let sig = b64_field(one, &["content"], "signature")?;
    if sig != expected.signature {
        return Err(VerifyError::TlogBody { field: "signature" });
    }
    let verifier = field(one, &["verifier"]).ok_or(VerifyError::TlogBody { field: "verifier" })?;
    match_v2_verifier(verifier, expected)
}

/// `intoto` 0.0.2 (Rekor v1): `payloadHash` (hex SHA-256 of the payload) and the envelope's one
/// signature, whose `sig` and `publicKey` are base64 of the base64 signature and of the PEM
/// signer; a `payload`, if recorded, is base64 of the base64 payload.
fn match_intoto(body: &Body, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
    let dsse = expected
        .dsse
        .as_ref()
        .ok_or(VerifyError::TlogBody { field: "kind" })?;
    let content =
        field(&body.spec, &["content"]).ok_or(VerifyError::TlogBody { field: "content" })?;
    let alg = str_field(content, &["payloadHash", "algorithm"], "hash algorithm")?;
    let value = str_field(content, &["payloadHash", "value"], "hash value")?;
    if alg != "sha256" || !value.eq_ignore_ascii_case(&hex::encode(expected.payload_sha256)) {
        return Err(VerifyError::TlogBody {
            field: "payload hash",
        });
    }
    let env = field(content, &["envelope"]).ok_or(VerifyError::TlogBody { field: "envelope" })?;
    if str_field(env, &["payloadType"], "payload type")? != dsse.payload_type {
        return Err(VerifyError::TlogBody {
            field: "payload type",
        });
    }
    if let Some(p) = field(env, &["payload"]) {
        let inner = p
            .as_str()
            .and_then(|p| b64decode(p).ok())
            .and_then(|p| String::from_utf8(p).ok())
            .and_then(|p| b64decode(&p).ok())
            .ok_or(VerifyError::TlogBody { field: "payload" })?;
        if inner != dsse.payload {
            return Err(VerifyError::TlogBody { field: "payload" });
        }
    }
    let list = field(env, &["signatures"])
        .and_then(|v| v.as_array())
        .ok_or(VerifyError::TlogBody {
            field: "signatures",
        })?;
    let [one] = list.as_slice() else {
        return Err(VerifyError::TlogBody {
            field: "number of signatures",
        });
    };
    let sig = b64_field(one, &["sig"], "signature")?;
    let sig = String::from_utf8(sig)
        .ok()
        .and_then(|s| b64decode(&s).ok())
        .ok_or(VerifyError::TlogBody { field: "signature" })?;
    if sig != expected.signature {
        return Err(VerifyError::TlogBody { field: "signature" });
    }
    match_pem_signer(str_field(one, &["publicKey"], "public key")?, expected)
}

/// A base64 PEM certificate or public key (Rekor v1 bodies) must be this signature's signer.
fn match_pem_signer(signer_b64: &str, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
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

fn match_v1(body: &Body, expected: &ExpectedEntry<'_>) -> Result<(), VerifyError> {
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
    match_pem_signer(signer_b64, expected)
}

#[cfg(test)]
mod entry_body_tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    const SIG: &[u8] = b"signature bytes";
    const CERT: &[u8] = b"certificate DER";
    const PAYLOAD: &[u8] = b"{\"_type\":\"statement\"}";

    fn expected(dsse: bool) -> ExpectedEntry<'static> {
        ExpectedEntry {
            payload_sha256: [7; 32],
            signature: SIG,
            signer_der: CERT,
            signer_is_cert: true,
            dsse: dsse.then_some(DsseExpectation {
                payload_type: "application/vnd.in-toto+json",
                pae_sha256: [9; 32],
                payload: PAYLOAD,
            }),
        }
    }

    fn encode(body: &serde_json::Value) -> String {
        STANDARD.encode(serde_json::to_vec(body).expect("JSON"))
    }

    fn hashedrekord_v2(digest: [u8; 32], sig: &[u8], cert: &[u8]) -> serde_json::Value {
        json!({"apiVersion": "0.0.2", "kind": "hashedrekord", "spec": {"hashedRekordV002": {
            "data": {"algorithm": "SHA2_256", "digest": STANDARD.encode(digest)},
            "signature": {"content": STANDARD.encode(sig), "verifier": {
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "x509Certificate": {"rawBytes": STANDARD.encode(cert)}}}}}})
    }

    fn field_of(r: Result<(), VerifyError>) -> &'static str {
        match r {
            Err(VerifyError::TlogBody { field }) => field,
            other => panic!("expected a body mismatch, got {other:?}"),
        }
    }

    #[test]
    fn hashedrekord_v2_records_the_artifact_or_the_pae_digest_the_signature_and_the_signer() {
        let m = |body: &serde_json::Value, dsse: bool| {
            match_entry_body(&encode(body), "hashedrekord", "0.0.2", &expected(dsse))
        };
        m(&hashedrekord_v2([7; 32], SIG, CERT), false).expect("message signature");
        m(&hashedrekord_v2([9; 32], SIG, CERT), true).expect("DSSE: the PAE digest");
        assert_eq!(
            field_of(m(&hashedrekord_v2([7; 32], SIG, CERT), true)),
            "payload hash"
        );
        assert_eq!(
            field_of(m(&hashedrekord_v2([8; 32], SIG, CERT), false)),
            "payload hash"
        );
        assert_eq!(
            field_of(m(&hashedrekord_v2([7; 32], b"other", CERT), false)),
            "signature"
        );
        assert_eq!(
            field_of(m(&hashedrekord_v2([7; 32], SIG, b"other"), false)),
            "signer key or certificate"
        );
        // A public key where a certificate signed is a mismatch, not a match by bytes.
        let mut key_verifier = hashedrekord_v2([7; 32], SIG, CERT);
        key_verifier["spec"]["hashedRekordV002"]["signature"]["verifier"] =
            json!({"publicKey": {"rawBytes": STANDARD.encode(CERT)}});
        assert_eq!(
            field_of(m(&key_verifier, false)),
            "signer key or certificate"
        );
        let mut sha384 = hashedrekord_v2([7; 32], SIG, CERT);
        sha384["spec"]["hashedRekordV002"]["data"]["algorithm"] = json!("SHA2_384");
        assert_eq!(field_of(m(&sha384, false)), "payload hash");
        // The body must be of the declared kind and version.
        let body = encode(&hashedrekord_v2([7; 32], SIG, CERT));
        assert_eq!(
            field_of(match_entry_body(
                &body,
                "hashedrekord",
                "0.0.1",
                &expected(false)
            )),
            "apiVersion"
        );
        assert_eq!(
            field_of(match_entry_body(&body, "dsse", "0.0.2", &expected(true))),
            "kind"
        );
        // The legacy path stays 0.0.1 only.
        assert_eq!(field_of(match_body(&body, &expected(false))), "apiVersion");
    }

    #[test]
    fn dsse_v2_records_the_payload_digest_and_exactly_one_signature() {
        let sig = |s: &[u8], c: &[u8]| json!({"content": STANDARD.encode(s), "verifier": {"x509Certificate": {"rawBytes": STANDARD.encode(c)}}});
        let body = |digest: [u8; 32], sigs: Vec<serde_json::Value>| {
            encode(
                &json!({"apiVersion": "0.0.2", "kind": "dsse", "spec": {"dsseV002": {
                "payloadHash": {"algorithm": "SHA2_256", "digest": STANDARD.encode(digest)},
                "signatures": sigs}}}),
            )
        };
        let m = |b: String| match_entry_body(&b, "dsse", "0.0.2", &expected(true));
        m(body([7; 32], vec![sig(SIG, CERT)])).expect("matches");
        assert_eq!(
            field_of(m(body([9; 32], vec![sig(SIG, CERT)]))),
            "payload hash"
        );
        assert_eq!(
            field_of(m(body([7; 32], vec![sig(b"x", CERT)]))),
            "signature"
        );
        assert_eq!(
            field_of(m(body([7; 32], vec![sig(SIG, CERT), sig(SIG, CERT)]))),
            "number of signatures"
        );
        assert_eq!(
            field_of(m(body([7; 32], vec![sig(SIG, b"x")]))),
            "signer key or certificate"
        );
        // A dsse entry cannot record a message signature.
        let b = body([7; 32], vec![sig(SIG, CERT)]);
        assert_eq!(
            field_of(match_entry_body(&b, "dsse", "0.0.2", &expected(false))),
            "kind"
        );
    }

    #[test]
    fn intoto_v2_records_payload_hash_type_and_the_double_encoded_signature() {
        let pem = crate::verify::keys::pem_encode("CERTIFICATE", CERT);
        let body = |hash: &str, sig: &[u8], payload: &[u8]| {
            encode(
                &json!({"apiVersion": "0.0.2", "kind": "intoto", "spec": {"content": {
                "envelope": {
                    "payloadType": "application/vnd.in-toto+json",
                    "payload": STANDARD.encode(STANDARD.encode(payload)),
                    "signatures": [{"sig": STANDARD.encode(STANDARD.encode(sig)),
                                    "publicKey": STANDARD.encode(&pem)}]},
                "payloadHash": {"algorithm": "sha256", "value": hash}}}}),
            )
        };
        let hash = hex::encode([7u8; 32]);
        let m = |b: String| match_entry_body(&b, "intoto", "0.0.2", &expected(true));
        m(body(&hash, SIG, PAYLOAD)).expect("matches");
        assert_eq!(
            field_of(m(body(&hex::encode([8u8; 32]), SIG, PAYLOAD))),
            "payload hash"
        );
        assert_eq!(field_of(m(body(&hash, b"other", PAYLOAD))), "signature");
        assert_eq!(field_of(m(body(&hash, SIG, b"other payload"))), "payload");
    }
}
