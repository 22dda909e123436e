//! Public keys and raw signature checks (ECDSA P-256/P-384/P-521, RSA PKCS#1 v1.5,
//! Ed25519/Ed25519ph). The digest algorithm is explicit because cosign verifies every key type
//! with SHA-256 unless told otherwise (`--signature-digest-algorithm`, default sha256), so a P-384
//! key signing SHA-256 digests (common with cloud KMS keys) is valid cosign usage.
//!
//! ECDSA signatures are checked by aws-lc-rs (already linked for the TUF client): RustCrypto's
//! P-384 took most of a keyless Rekor v2 + RFC 3161 verification (Fulcio and TSA chains are
//! P-384), measured in docs/verification.md. Encodings are still checked first with RustCrypto's
//! strict DER parsers, so what is refused as malformed stays exactly as before. RSA and Ed25519
//! stay on RustCrypto.

use der::Decode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use super::error::VerifyError;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// RSA keys below this size are refused: they no longer give meaningful assurance.
const MIN_RSA_BITS: usize = 2048;

/// Digest used before signing (for ECDSA and RSA; Ed25519 hashes internally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// cosign's default for every key type.
    #[default]
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// Hash `msg` with this algorithm.
    pub fn digest(self, msg: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => Sha256::digest(msg).to_vec(),
            HashAlg::Sha384 => Sha384::digest(msg).to_vec(),
            HashAlg::Sha512 => Sha512::digest(msg).to_vec(),
        }
    }
}

/// A parsed public key able to verify signatures.
#[derive(Clone)]
pub struct PublicKey {
    inner: KeyInner,
    spki_der: Vec<u8>,
}

#[derive(Clone)]
enum KeyInner {
    /// An ECDSA key, its SEC1 point as the SubjectPublicKeyInfo holds it (validated on parse).
    Ecdsa {
        curve: Curve,
        point: Vec<u8>,
    },
    /// An RSA key; `pss`: its signatures are RSASSA-PSS (a trusted root's `keyDetails` says so),
    /// else PKCS#1 v1.5.
    Rsa {
        key: rsa::RsaPublicKey,
        pss: bool,
    },
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// aws-lc-rs's RSASSA-PSS verification with `hash` (MGF1 with the same hash, salt as long as
/// the digest: what RSA-PSS `keyDetails` name).
fn rsa_pss(hash: HashAlg) -> &'static aws_lc_rs::signature::RsaParameters {
    use aws_lc_rs::signature as s;
    match hash {
        HashAlg::Sha256 => &s::RSA_PSS_2048_8192_SHA256,
        HashAlg::Sha384 => &s::RSA_PSS_2048_8192_SHA384,
        HashAlg::Sha512 => &s::RSA_PSS_2048_8192_SHA512,
    }
}

/// The NIST curves ECDSA keys may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// aws-lc-rs's verification algorithm for this curve with `hash` (DER signatures).
    fn verifier(self, hash: HashAlg) -> &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm {
        use aws_lc_rs::signature as s;
        match (self, hash) {
            (Curve::P256, HashAlg::Sha256) => &s::ECDSA_P256_SHA256_ASN1,
            (Curve::P256, HashAlg::Sha384) => &s::ECDSA_P256_SHA384_ASN1,
            (Curve::P256, HashAlg::Sha512) => &s::ECDSA_P256_SHA512_ASN1,
            (Curve::P384, HashAlg::Sha256) => &s::ECDSA_P384_SHA256_ASN1,
            (Curve::P384, HashAlg::Sha384) => &s::ECDSA_P384_SHA384_ASN1,
            (Curve::P384, HashAlg::Sha512) => &s::ECDSA_P384_SHA512_ASN1,
            (Curve::P521, HashAlg::Sha256) => &s::ECDSA_P521_SHA256_ASN1,
            (Curve::P521, HashAlg::Sha384) => &s::ECDSA_P521_SHA384_ASN1,
            (Curve::P521, HashAlg::Sha512) => &s::ECDSA_P521_SHA512_ASN1,
        }
    }

    /// Whether `sig` is a strict DER ECDSA-Sig-Value with r and s in range for the curve.
    fn check_encoding(self, sig: &[u8]) -> Result<(), String> {
        match self {
            Curve::P256 => p256::ecdsa::Signature::from_der(sig)
                .map(drop)
                .map_err(|e| e.to_string()),
            Curve::P384 => p384::ecdsa::Signature::from_der(sig)
                .map(drop)
                .map_err(|e| e.to_string()),
            Curve::P521 => {
                // SEQUENCE { r INTEGER, s INTEGER }, each positive and at most 521 bits.
                #[derive(der::Sequence)]
                struct EcdsaSig<'a> {
                    r: der::asn1::UintRef<'a>,
                    s: der::asn1::UintRef<'a>,
                }
                let value = EcdsaSig::from_der(sig).map_err(|e| e.to_string())?;
                for (name, n) in [("r", value.r), ("s", value.s)] {
                    let bytes = n.as_bytes();
                    if bytes.iter().all(|b| *b == 0)
                        || bytes.len() > 66
                        || (bytes.len() == 66 && bytes[0] > 1)
                    {
                        return Err(format!("{name} out of range"));
                    }
                }
                Ok(())
            }
        }
    }
}

fn aws_lc_digest(hash: HashAlg) -> &'static aws_lc_rs::digest::Algorithm {
    match hash {
        HashAlg::Sha256 => &aws_lc_rs::digest::SHA256,
        HashAlg::Sha384 => &aws_lc_rs::digest::SHA384,
        HashAlg::Sha512 => &aws_lc_rs::digest::SHA512,
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.fingerprint())
    }
}

fn key_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::KeyParse {
        detail: detail.to_string(),
    }
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), the format cosign writes.
    pub fn from_pem(pem: &str) -> Result<Self, VerifyError> {
        let (label, der) = pem_rfc7468_decode(pem.trim().as_bytes()).map_err(key_err)?;
        if label != "PUBLIC KEY" {
            return Err(key_err(format!("PEM label {label:?} is not PUBLIC KEY")));
        }
        Self::from_spki_der(&der)
    }

    /// Parse every `PUBLIC KEY` block in a PEM file (a file may hold several keys).
    pub fn all_from_pem(pem: &str) -> Result<Vec<Self>, VerifyError> {
        let blocks = split_pem_blocks(pem);
        if blocks.is_empty() {
            return Err(key_err("no PEM block found"));
        }
        blocks.iter().map(|b| Self::from_pem(b)).collect()
    }

    /// Parse a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, VerifyError> {
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(key_err)?;
        let key_bytes = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| key_err("public key bit string has unused bits"))?;
        let inner = match spki.algorithm.oid {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters_oid()
                    .map_err(|e| key_err(format!("EC key without named curve: {e}")))?;
                let curve = match curve {
                    OID_P256 => Curve::P256,
                    OID_P384 => Curve::P384,
                    OID_P521 => Curve::P521,
                    other => return Err(key_err(format!("unsupported EC curve {other}"))),
                };
                // A point that is not on the curve is refused here, not at its first use.
                aws_lc_rs::signature::UnparsedPublicKey::new(
                    curve.verifier(HashAlg::Sha256),
                    key_bytes,
                )
                .parse()
                .map_err(|e| key_err(format!("{curve:?} public key: {e}")))?;
                KeyInner::Ecdsa {
                    curve,
                    point: key_bytes.to_vec(),
                }
            }
            OID_RSA => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                use rsa::traits::PublicKeyParts;
                let key = rsa::RsaPublicKey::from_pkcs1_der(key_bytes).map_err(key_err)?;
                if key.size() * 8 < MIN_RSA_BITS {
                    return Err(key_err(format!(
                        "RSA key of {} bits is too small",
                        key.size() * 8
                    )));
                }
                KeyInner::Rsa { key, pss: false }
            }
            OID_ED25519 => {
                let bytes: [u8; 32] = key_bytes
                    .try_into()
                    .map_err(|_| key_err("Ed25519 key is not 32 bytes"))?;
                KeyInner::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(key_err)?)
            }
            other => return Err(key_err(format!("unsupported key algorithm {other}"))),
        };
        Ok(PublicKey {
            inner,
            spki_der: der.to_vec(),
        })
    }

    /// Parse a bare PKCS#1 `RSAPublicKey` (trusted_root.json's `PKCS1_RSA_PKCS1V5` encoding). The
    /// key is re-wrapped as a SubjectPublicKeyInfo, so its fingerprint and log id are the usual
    /// SHA-256 of the SPKI.
    pub fn from_pkcs1_rsa_der(der: &[u8]) -> Result<Self, VerifyError> {
        use der::Encode;
        let spki = spki::SubjectPublicKeyInfoOwned {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: OID_RSA,
                parameters: Some(der::asn1::Any::null()),
            },
            subject_public_key: der::asn1::BitString::from_bytes(der).map_err(key_err)?,
        };
        Self::from_spki_der(&spki.to_der().map_err(key_err)?)
    }

    /// This RSA key with RSASSA-PSS signatures (a trusted root's `keyDetails` names the scheme;
    /// the key encoding is the same as for PKCS#1 v1.5).
    pub fn into_rsa_pss(mut self) -> Result<Self, VerifyError> {
        match &mut self.inner {
            KeyInner::Rsa { pss, .. } => {
                *pss = true;
                Ok(self)
            }
            _ => Err(key_err(format!(
                "an RSA-PSS key must be RSA, not {}",
                self.algorithm()
            ))),
        }
    }

    /// Whether this key is of the kind a trusted_root.json `keyDetails` value names.
    pub fn matches_key_details(&self, details: &str) -> bool {
        match (&self.inner, details) {
            (
                KeyInner::Ecdsa {
                    curve: Curve::P256, ..
                },
                "PKIX_ECDSA_P256_SHA_256",
            )
            | (
                KeyInner::Ecdsa {
                    curve: Curve::P384, ..
                },
                "PKIX_ECDSA_P384_SHA_384",
            )
            | (
                KeyInner::Ecdsa {
                    curve: Curve::P521, ..
                },
                "PKIX_ECDSA_P521_SHA_512",
            ) => true,
            (KeyInner::Ed25519(_), "PKIX_ED25519" | "PKIX_ED25519_PH") => true,
            (KeyInner::Rsa { key, pss }, d) => {
                use rsa::traits::PublicKeyParts;
                let bits = key.size() * 8;
                match (pss, d) {
                    (false, "PKIX_RSA_PKCS1V5" | "PKCS1_RSA_PKCS1V5")
                    | (true, "PKIX_RSA_PSS" | "PKCS1_RSA_PSS") => true,
                    (false, "PKIX_RSA_PKCS1V15_2048_SHA256")
                    | (true, "PKIX_RSA_PSS_2048_SHA256") => bits == 2048,
                    (false, "PKIX_RSA_PKCS1V15_3072_SHA256")
                    | (true, "PKIX_RSA_PSS_3072_SHA256") => bits == 3072,
                    (false, "PKIX_RSA_PKCS1V15_4096_SHA256")
                    | (true, "PKIX_RSA_PSS_4096_SHA256") => bits == 4096,
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// DER SubjectPublicKeyInfo, e.g. to compare with the key recorded in a Rekor entry.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo: how verdicts and logs name a key.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.spki_der)))
    }

    /// SHA-256 of the SubjectPublicKeyInfo: the transparency and CT log id of a log key.
    pub fn log_id(&self) -> [u8; 32] {
        Sha256::digest(&self.spki_der).into()
    }

    /// Human-readable algorithm name.
    pub fn algorithm(&self) -> &'static str {
        match self.inner {
            KeyInner::Ecdsa { curve, .. } => match curve {
                Curve::P256 => "ecdsa-p256",
                Curve::P384 => "ecdsa-p384",
                Curve::P521 => "ecdsa-p521",
            },
            KeyInner::Rsa { pss: false, .. } => "rsa",
            KeyInner::Rsa { pss: true, .. } => "rsa-pss",
            KeyInner::Ed25519(_) => "ed25519",
        }
    }

    /// The digest a signer would naturally pair with this key (bundles and X.509 use it).
    pub fn natural_hash(&self) -> HashAlg {
        match self.inner {
            KeyInner::Ecdsa {
                curve: Curve::P384, ..
            } => HashAlg::Sha384,
            KeyInner::Ecdsa {
                curve: Curve::P521, ..
            } => HashAlg::Sha512,
            _ => HashAlg::Sha256,
        }
    }

    /// Verify `sig` over `msg`. For ECDSA/RSA the message is hashed with `hash`; Ed25519 keys
    /// accept pure Ed25519 and Ed25519ph (SHA-512 prehash, empty context): RFC 8032's domain
    /// separation makes the two unconfusable, and both prove the key holder signed `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8], hash: HashAlg) -> Result<(), VerifyError> {
        match &self.inner {
            KeyInner::Ed25519(vk) => {
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|e| {
                    VerifyError::SignatureEncoding {
                        detail: format!("Ed25519 signature: {e}"),
                    }
                })?;
                if vk.verify_strict(msg, &sig).is_ok() {
                    return Ok(());
                }
                let prehash = Sha512::new_with_prefix(msg);
                vk.verify_prehashed_strict(prehash, None, &sig)
                    .map_err(|_| self.invalid())
            }
            KeyInner::Ecdsa { .. } | KeyInner::Rsa { .. } => {
                self.verify_prehash(&hash.digest(msg), sig, hash)
            }
        }
    }

    /// aws-lc-rs's check of `sig` over `digest` (of `hash`) with `key` under `algorithm`.
    fn aws_lc_verify_digest(
        &self,
        algorithm: &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
        key: &[u8],
        digest: &[u8],
        sig: &[u8],
        hash: HashAlg,
    ) -> Result<(), VerifyError> {
        // A digest of another length than `hash`'s cannot be the one signed.
        let digest = aws_lc_rs::digest::Digest::import_less_safe(digest, aws_lc_digest(hash))
            .map_err(|_| self.invalid())?;
        aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, key)
            .verify_digest(&digest, sig)
            .map_err(|_| self.invalid())
    }

    fn check_ecdsa_encoding(&self, curve: Curve, sig: &[u8]) -> Result<(), VerifyError> {
        curve
            .check_encoding(sig)
            .map_err(|e| VerifyError::SignatureEncoding {
                detail: format!("{}: {e}", self.algorithm()),
            })
    }

    /// Verify `sig` over an already computed digest (message-signature bundles, where only the
    /// artifact digest is known). Not possible for pure Ed25519.
    pub fn verify_prehash(
        &self,
        digest: &[u8],
        sig: &[u8],
        hash: HashAlg,
    ) -> Result<(), VerifyError> {
        match &self.inner {
            KeyInner::Ecdsa { curve, point } => {
                self.check_ecdsa_encoding(*curve, sig)?;
                self.aws_lc_verify_digest(curve.verifier(hash), point, digest, sig, hash)
            }
            KeyInner::Rsa { pss: true, .. } => {
                self.aws_lc_verify_digest(rsa_pss(hash), &self.spki_der, digest, sig, hash)
            }
            KeyInner::Rsa { key, pss: false } => {
                let scheme = match hash {
                    HashAlg::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
                    HashAlg::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
                    HashAlg::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
                };
                key.verify(scheme, digest, sig).map_err(|_| self.invalid())
            }
            KeyInner::Ed25519(_) => Err(VerifyError::KeyParse {
                detail: "pure Ed25519 cannot verify a signature over a digest only".into(),
            }),
        }
    }

    fn invalid(&self) -> VerifyError {
        VerifyError::SignatureInvalid {
            key: format!("{} key {}", self.algorithm(), self.fingerprint()),
        }
    }

    /// PEM encoding, for error messages and round trips.
    pub fn to_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der)
    }
}

/// Re-encode a DER blob; exposed so other modules share one PEM implementation.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Split a text into its `-----BEGIN ...-----`/`-----END ...-----` blocks.
pub(crate) fn split_pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(c) = current.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            if let Some(c) = current.take() {
                blocks.push(c);
            }
        }
    }
    blocks
}

/// Decode one PEM block into (label, DER). Hand-rolled rather than strict RFC 7468 because
/// signers wrap base64 at different widths (64, 76) and sometimes use CRLF.
pub(crate) fn pem_rfc7468_decode(pem: &[u8]) -> Result<(String, Vec<u8>), String> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).map_err(|e| e.to_string())?;
    let mut label = None;
    let mut body = String::new();
    let mut ended = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            if label.is_some() {
                return Err("nested BEGIN line".into());
            }
            label = Some(
                rest.strip_suffix("-----")
                    .ok_or("malformed BEGIN line")?
                    .to_string(),
            );
        } else if let Some(rest) = line.strip_prefix("-----END ") {
            let end = rest.strip_suffix("-----").ok_or("malformed END line")?;
            if label.as_deref() != Some(end) {
                return Err("END label does not match BEGIN".into());
            }
            ended = true;
            break;
        } else if label.is_some() {
            if line.contains(':') {
                return Err("PEM headers are not supported".into());
            }
            body.push_str(line);
        } else if !line.is_empty() {
            return Err("text before the BEGIN line".into());
        }
    }
    let label = label.ok_or("no BEGIN line")?;
    if !ended {
        return Err("no END line".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| format!("bad base64 in PEM: {e}"))?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message
    use super::*;

    /// ECDSA checks now run on aws-lc-rs: signatures made by another implementation
    /// (RustCrypto, RFC 6979) verify over the message and over its digest, a changed message is
    /// an invalid signature, and a malformed one is still refused as an encoding error.
    #[test]
    fn ecdsa_signatures_from_another_implementation_verify_as_before() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey as _;
        let msg = b"cosign payload";
        let p256_key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let p384_key = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
        let cases: [(Vec<u8>, Vec<u8>, HashAlg); 2] = [
            (
                p256_key
                    .verifying_key()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec(),
                p256::ecdsa::Signature::to_der(&p256_key.sign(msg))
                    .as_bytes()
                    .to_vec(),
                HashAlg::Sha256,
            ),
            (
                p384_key
                    .verifying_key()
                    .to_public_key_der()
                    .unwrap()
                    .into_vec(),
                p384::ecdsa::Signature::to_der(&p384_key.sign(msg))
                    .as_bytes()
                    .to_vec(),
                HashAlg::Sha384,
            ),
        ];
        for (spki, sig, hash) in cases {
            let key = PublicKey::from_spki_der(&spki).unwrap();
            assert_eq!(key.natural_hash(), hash);
            key.verify(msg, &sig, hash).unwrap();
            key.verify_prehash(&hash.digest(msg), &sig, hash).unwrap();
            assert!(matches!(
                key.verify(b"another payload", &sig, hash),
                Err(VerifyError::SignatureInvalid { .. })
            ));
            // The right signature checked with another digest than the one signed.
            assert!(key.verify(msg, &sig, HashAlg::Sha512).is_err());
            assert!(matches!(
                key.verify(msg, &sig[..sig.len() - 1], hash),
                Err(VerifyError::SignatureEncoding { .. })
            ));
            // A digest of the wrong length for its algorithm is no signature over it.
            assert!(key.verify_prehash(&[0u8; 20], &sig, hash).is_err());
        }
    }

    /// RSA-PSS keys (`PKIX_RSA_PSS_*` in a trusted root) verify PSS signatures and only those;
    /// the same key as PKCS#1 v1.5 does not accept them.
    #[test]
    fn rsa_pss_keys_verify_pss_signatures_only() {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let msg = b"a signed entry timestamp";
        let mut pss_sig = vec![0u8; pair.public_modulus_len()];
        pair.sign(&RSA_PSS_SHA256, &rng, msg, &mut pss_sig).unwrap();
        let mut v15_sig = vec![0u8; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut v15_sig)
            .unwrap();

        let v15 = PublicKey::from_spki_der(spki.as_ref()).unwrap();
        let pss = v15.clone().into_rsa_pss().unwrap();
        assert_eq!(pss.algorithm(), "rsa-pss");
        assert!(pss.matches_key_details("PKIX_RSA_PSS_2048_SHA256"));
        assert!(!pss.matches_key_details("PKIX_RSA_PSS_3072_SHA256"));
        assert!(!pss.matches_key_details("PKIX_RSA_PKCS1V15_2048_SHA256"));
        assert!(!v15.matches_key_details("PKIX_RSA_PSS_2048_SHA256"));
        pss.verify(msg, &pss_sig, HashAlg::Sha256).unwrap();
        pss.verify_prehash(&HashAlg::Sha256.digest(msg), &pss_sig, HashAlg::Sha256)
            .unwrap();
        assert!(pss.verify(b"another", &pss_sig, HashAlg::Sha256).is_err());
        assert!(pss.verify(msg, &v15_sig, HashAlg::Sha256).is_err());
        v15.verify(msg, &v15_sig, HashAlg::Sha256).unwrap();
        assert!(v15.verify(msg, &pss_sig, HashAlg::Sha256).is_err());
        // The same fingerprint and log id: only the signature scheme differs.
        assert_eq!(pss.log_id(), v15.log_id());
        let p256 = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let ec = PublicKey::from_spki_der(
            p256::pkcs8::EncodePublicKey::to_public_key_der(p256.verifying_key())
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(ec.into_rsa_pss().is_err());
    }

    /// P-521 keys (trusted roots may name `PKIX_ECDSA_P521_SHA_512`) verify SHA-512 signatures.
    #[test]
    fn p521_keys_verify() {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P521_SHA512_ASN1_SIGNING};
        let pair = EcdsaKeyPair::generate(&ECDSA_P521_SHA512_ASN1_SIGNING).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let key = PublicKey::from_spki_der(spki.as_ref()).unwrap();
        assert_eq!(key.algorithm(), "ecdsa-p521");
        assert_eq!(key.natural_hash(), HashAlg::Sha512);
        assert!(key.matches_key_details("PKIX_ECDSA_P521_SHA_512"));
        assert!(!key.matches_key_details("PKIX_ECDSA_P384_SHA_384"));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let msg = b"a checkpoint";
        let sig = pair.sign(&rng, msg).unwrap();
        key.verify(msg, sig.as_ref(), HashAlg::Sha512).unwrap();
        key.verify_prehash(&HashAlg::Sha512.digest(msg), sig.as_ref(), HashAlg::Sha512)
            .unwrap();
        assert!(matches!(
            key.verify(b"another", sig.as_ref(), HashAlg::Sha512),
            Err(VerifyError::SignatureInvalid { .. })
        ));
        assert!(matches!(
            key.verify(msg, &sig.as_ref()[1..], HashAlg::Sha512),
            Err(VerifyError::SignatureEncoding { .. })
        ));
        // A point off the curve is refused when the key is parsed.
        let mut bad = spki.as_ref().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(PublicKey::from_spki_der(&bad).is_err());
    }
}
