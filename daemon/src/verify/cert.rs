//! X.509 certificates: parsing, chain building to trusted CAs at a given time (the signing time
//! for Fulcio's 10-minute certificates, not "now"), and the signature checks on each link.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use x509_cert::Certificate;

use super::error::VerifyError;
use super::keys::{pem_rfc7468_decode, split_pem_blocks, HashAlg, PublicKey};

const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

pub(crate) const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// Extended key usage a code-signing (cosign) leaf must allow.
pub const OID_EKU_CODE_SIGNING: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// Extended key usage a timestamping authority's leaf must carry.
pub const OID_EKU_TIME_STAMPING: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");
const OID_EKU_ANY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");

/// Longest chain (leaf to anchor) we follow; real Fulcio chains have 2-3 links.
const MAX_CHAIN_DEPTH: usize = 6;

/// A parsed certificate that keeps its exact DER (signatures cover the original bytes).
#[derive(Clone)]
pub struct Cert {
    der: Vec<u8>,
    parsed: Certificate,
    key: PublicKey,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cert({})", self.subject())
    }
}

fn parse_err(what: &'static str, detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::CertParse {
        what,
        detail: detail.to_string(),
    }
}

impl Cert {
    /// Parse one DER certificate.
    pub fn from_der(der: &[u8], what: &'static str) -> Result<Self, VerifyError> {
        let parsed = Certificate::from_der(der).map_err(|e| parse_err(what, e))?;
        let spki = parsed
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| parse_err(what, e))?;
        let key = PublicKey::from_spki_der(&spki).map_err(|e| parse_err(what, e))?;
        Ok(Cert {
            der: der.to_vec(),
            parsed,
            key,
        })
    }

    /// Parse exactly one PEM certificate.
    pub fn from_pem(pem: &str, what: &'static str) -> Result<Self, VerifyError> {
        let mut all = Self::all_from_pem(pem, what)?;
        if all.len() != 1 {
            return Err(parse_err(
                what,
                format!("expected one certificate, found {}", all.len()),
            ));
        }
        Ok(all.remove(0))
    }

    /// Parse every certificate of a PEM bundle (chain annotations, CA files). Empty is an error.
    pub fn all_from_pem(pem: &str, what: &'static str) -> Result<Vec<Self>, VerifyError> {
        let blocks = split_pem_blocks(pem);
        if blocks.is_empty() {
            return Err(parse_err(what, "no PEM certificate found"));
        }
        blocks
            .iter()
            .map(|b| {
                let (label, der) =
                    pem_rfc7468_decode(b.as_bytes()).map_err(|e| parse_err(what, e))?;
                if label != "CERTIFICATE" {
                    return Err(parse_err(
                        what,
                        format!("PEM label {label:?} is not CERTIFICATE"),
                    ));
                }
                Self::from_der(&der, what)
            })
            .collect()
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }
    pub fn parsed(&self) -> &Certificate {
        &self.parsed
    }
    /// The certificate's subject public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }
    /// Subject name as text, for messages.
    pub fn subject(&self) -> String {
        self.parsed.tbs_certificate.subject.to_string()
    }

    /// notBefore/notAfter as Unix seconds.
    pub fn validity(&self) -> (i64, i64) {
        let v = &self.parsed.tbs_certificate.validity;
        (
            v.not_before.to_unix_duration().as_secs() as i64,
            v.not_after.to_unix_duration().as_secs() as i64,
        )
    }

    fn check_valid_at(&self, at: i64) -> Result<(), VerifyError> {
        let (nb, na) = self.validity();
        if at < nb || at > na {
            return Err(VerifyError::CertChain {
                detail: format!(
                    "certificate {:?} is not valid at {at} (valid {nb}..{na})",
                    self.subject()
                ),
            });
        }
        Ok(())
    }

    /// Extension value (inner DER) by OID; duplicates are malformed and refused.
    pub fn extension(&self, oid: ObjectIdentifier) -> Result<Option<&[u8]>, VerifyError> {
        let mut found = None;
        for ext in self.parsed.tbs_certificate.extensions.iter().flatten() {
            if ext.extn_id == oid {
                if found.is_some() {
                    return Err(parse_err(
                        "certificate",
                        format!("duplicate extension {oid}"),
                    ));
                }
                found = Some(ext.extn_value.as_bytes());
            }
        }
        Ok(found)
    }

    /// Whether subject and issuer are the same name (a root, or another self-issued CA).
    pub fn is_self_issued(&self) -> bool {
        self.parsed.tbs_certificate.subject == self.parsed.tbs_certificate.issuer
    }

    fn is_ca(&self) -> Result<bool, VerifyError> {
        let Some(bc) = self.extension(OID_BASIC_CONSTRAINTS)? else {
            return Ok(false);
        };
        let bc = x509_cert::ext::pkix::BasicConstraints::from_der(bc)
            .map_err(|e| parse_err("CA certificate", e))?;
        if !bc.ca {
            return Ok(false);
        }
        if let Some(ku) = self.extension(OID_KEY_USAGE)? {
            let ku = x509_cert::ext::pkix::KeyUsage::from_der(ku)
                .map_err(|e| parse_err("CA certificate", e))?;
            return Ok(ku.key_cert_sign());
        }
        Ok(true)
    }

    /// Check the leaf may sign for `purpose`: digitalSignature usage and, when EKUs are listed,
    /// `purpose` (codeSigning for cosign, as its x509 verification options require).
    fn check_leaf_usage(&self, purpose: ObjectIdentifier) -> Result<(), VerifyError> {
        if let Some(ku) = self.extension(OID_KEY_USAGE)? {
            let ku = x509_cert::ext::pkix::KeyUsage::from_der(ku)
                .map_err(|e| parse_err("certificate", e))?;
            if !ku.digital_signature() {
                return Err(VerifyError::CertChain {
                    detail: "leaf key usage lacks digitalSignature".into(),
                });
            }
        }
        if let Some(eku) = self.extension(OID_EKU)? {
            let eku = x509_cert::ext::pkix::ExtendedKeyUsage::from_der(eku)
                .map_err(|e| parse_err("certificate", e))?;
            if !eku
                .0
                .iter()
                .any(|o| *o == purpose || (*o == OID_EKU_ANY && purpose == OID_EKU_CODE_SIGNING))
            {
                return Err(VerifyError::CertChain {
                    detail: format!("leaf extended key usage lacks {purpose}"),
                });
            }
        } else if purpose == OID_EKU_TIME_STAMPING {
            return Err(VerifyError::CertChain {
                detail: "timestamping certificate without extended key usage".into(),
            });
        }
        Ok(())
    }

    /// Refuse certificates with critical extensions we do not evaluate: a constraint we would
    /// silently ignore could widen what the issuer allowed.
    fn check_critical_extensions(&self, handled: &[ObjectIdentifier]) -> Result<(), VerifyError> {
        for ext in self.parsed.tbs_certificate.extensions.iter().flatten() {
            if ext.critical && !handled.contains(&ext.extn_id) {
                return Err(VerifyError::CertChain {
                    detail: format!(
                        "unhandled critical extension {} in {:?}",
                        ext.extn_id,
                        self.subject()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether `issuer` signed this certificate (name link and signature).
    fn issued_by(&self, issuer: &Cert) -> bool {
        if self.parsed.tbs_certificate.issuer != issuer.parsed.tbs_certificate.subject {
            return false;
        }
        let Some(tbs) = raw_tbs(&self.der) else {
            return false;
        };
        let Some(sig) = self.parsed.signature.as_bytes() else {
            return false;
        };
        let hash = match self.parsed.signature_algorithm.oid {
            OID_ECDSA_SHA256 | OID_RSA_SHA256 | OID_ED25519 => HashAlg::Sha256,
            OID_ECDSA_SHA384 | OID_RSA_SHA384 => HashAlg::Sha384,
            OID_ECDSA_SHA512 | OID_RSA_SHA512 => HashAlg::Sha512,
            _ => return false,
        };
        issuer.key.verify(tbs, sig, hash).is_ok()
    }
}

/// A CA the policy trusts, optionally only within a window (trusted_root.json `validFor`).
#[derive(Debug, Clone)]
pub struct TrustAnchor {
    pub cert: Cert,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
}

impl TrustAnchor {
    pub fn new(cert: Cert) -> Self {
        TrustAnchor {
            cert,
            valid_from: None,
            valid_until: None,
        }
    }
    fn usable_at(&self, at: i64) -> bool {
        self.valid_from.is_none_or(|s| at >= s) && self.valid_until.is_none_or(|e| at <= e)
    }
}

/// The raw TBSCertificate bytes (first element of the outer SEQUENCE) of a DER certificate.
pub(crate) fn raw_tbs(der: &[u8]) -> Option<&[u8]> {
    let (hdr, len) = tlv_header(der)?;
    let inner = der.get(hdr..hdr + len)?;
    let (thdr, tlen) = tlv_header(inner)?;
    inner.get(..thdr + tlen)
}

/// (header length, content length) of a DER TLV with a one-byte tag.
pub(crate) fn tlv_header(b: &[u8]) -> Option<(usize, usize)> {
    let first = *b.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *b.get(2 + i)? as usize;
    }
    Some((2 + n, len))
}

/// Build and check a path from `leaf` through `intermediates` (untrusted, from the signature)
/// to one of `anchors`, every certificate valid at `at`. Returns the path, leaf first, ending
/// with the anchor's certificate.
pub fn verify_chain(
    leaf: &Cert,
    intermediates: &[Cert],
    anchors: &[TrustAnchor],
    at: i64,
) -> Result<Vec<Cert>, VerifyError> {
    verify_chain_for(leaf, intermediates, anchors, at, OID_EKU_CODE_SIGNING)
}

/// [`verify_chain`] for a leaf used for `purpose` (an extended key usage OID).
pub fn verify_chain_for(
    leaf: &Cert,
    intermediates: &[Cert],
    anchors: &[TrustAnchor],
    at: i64,
    purpose: ObjectIdentifier,
) -> Result<Vec<Cert>, VerifyError> {
    leaf.check_critical_extensions(&[OID_SAN, OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_EKU])?;
    leaf.check_leaf_usage(purpose)?;
    leaf.check_valid_at(at)?;
    if anchors.is_empty() {
        return Err(VerifyError::CertChain {
            detail: "no trusted certificate authority configured".into(),
        });
    }
    let mut path = vec![leaf.clone()];
    if extend(&mut path, intermediates, anchors, at)? {
        return Ok(path);
    }
    Err(VerifyError::CertChain {
        detail: format!(
            "no path from {:?} to a trusted CA valid at {at}",
            leaf.subject()
        ),
    })
}

fn extend(
    path: &mut Vec<Cert>,
    pool: &[Cert],
    anchors: &[TrustAnchor],
    at: i64,
) -> Result<bool, VerifyError> {
    let Some(current) = path.last().cloned() else {
        return Ok(false);
    };
    for anchor in anchors {
        if anchor.usable_at(at)
            && current.issued_by(&anchor.cert)
            && anchor.cert.check_valid_at(at).is_ok()
            && anchor.cert.is_ca()?
        {
            path.push(anchor.cert.clone());
            return Ok(true);
        }
    }
    if path.len() >= MAX_CHAIN_DEPTH {
        return Ok(false);
    }
    for cand in pool {
        if path.iter().any(|p| p.der == cand.der) {
            continue;
        }
        if current.issued_by(cand)
            && cand.check_valid_at(at).is_ok()
            && cand.is_ca()?
            && cand
                .check_critical_extensions(&[OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_EKU])
                .is_ok()
        {
            path.push(cand.clone());
            if extend(path, pool, anchors, at)? {
                return Ok(true);
            }
            path.pop();
        }
    }
    Ok(false)
}
