//! Embedded signed certificate timestamps (RFC 6962 precertificate SCTs) in Fulcio leaves: proof
//! that the certificate was published to a CT log, so a mis-issued certificate is detectable.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};

use super::cert::Cert;
use super::error::VerifyError;
use super::keys::HashAlg;
use super::trust::TrustMaterial;

const OID_SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");

fn sct_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::Sct {
        detail: detail.to_string(),
    }
}

/// A byte reader for TLS-encoded structures.
struct Tls<'a>(&'a [u8]);

impl<'a> Tls<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], VerifyError> {
        if self.0.len() < n {
            return Err(sct_err("truncated SCT list"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, VerifyError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, VerifyError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn vec16(&mut self) -> Result<&'a [u8], VerifyError> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Verify that `leaf` (issued by `issuer`) carries at least one SCT that verifies against a
/// trusted CT log key. Returns the number of valid SCTs.
pub fn verify_embedded_scts(
    leaf: &Cert,
    issuer: &Cert,
    trust: &TrustMaterial,
) -> Result<usize, VerifyError> {
    let ext = leaf
        .extension(OID_SCT_LIST)?
        .ok_or_else(|| sct_err("certificate has no embedded SCT"))?;
    let list = der::asn1::OctetStringRef::from_der(ext).map_err(sct_err)?;
    let mut outer = Tls(list.as_bytes());
    let mut scts = Tls(outer.vec16()?);
    if !outer.0.is_empty() {
        return Err(sct_err("trailing bytes after SCT list"));
    }

    // The precertificate TBS: the leaf's TBS without the SCT list extension.
    let mut tbs = leaf.parsed().tbs_certificate.clone();
    if let Some(exts) = tbs.extensions.as_mut() {
        exts.retain(|e| e.extn_id != OID_SCT_LIST);
    }
    let tbs_der = tbs.to_der().map_err(sct_err)?;
    let issuer_spki = issuer
        .parsed()
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(sct_err)?;
    let issuer_key_hash = Sha256::digest(&issuer_spki);

    let mut valid = 0;
    let mut last_err = sct_err("empty SCT list");
    while !scts.0.is_empty() {
        let mut sct = Tls(scts.vec16()?);
        let version = sct.u8()?;
        let log_id = sct.take(32)?;
        let timestamp = sct.take(8)?;
        let extensions = sct.vec16()?;
        let hash_alg = sct.u8()?;
        let sig_alg = sct.u8()?;
        let signature = sct.vec16()?;
        if version != 0 {
            last_err = sct_err(format!("unsupported SCT version {version}"));
            continue;
        }
        let Some(key) = trust.ctlogs.iter().find(|k| k.log_id.as_slice() == log_id) else {
            last_err = match trust.unusable_ctlog(log_id) {
                Some(u) => sct_err(format!("SCT from CT {u}")),
                None => sct_err(format!("SCT from unknown CT log {}", hex::encode(log_id))),
            };
            continue;
        };
        let hash = match hash_alg {
            4 => HashAlg::Sha256,
            5 => HashAlg::Sha384,
            6 => HashAlg::Sha512,
            other => {
                last_err = sct_err(format!("unsupported SCT hash algorithm {other}"));
                continue;
            }
        };
        let _ = sig_alg; // the key type decides; a mismatching signature simply fails below
        let mut signed = Vec::with_capacity(tbs_der.len() + 64);
        signed.push(0); // version v1
        signed.push(0); // signature_type certificate_timestamp
        signed.extend_from_slice(timestamp);
        signed.extend_from_slice(&1u16.to_be_bytes()); // entry_type precert_entry
        signed.extend_from_slice(&issuer_key_hash);
        let len = tbs_der.len();
        if len >= 1 << 24 {
            return Err(sct_err("TBS certificate too large"));
        }
        signed.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
        signed.extend_from_slice(&tbs_der);
        signed.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        signed.extend_from_slice(extensions);
        let ts_ms = u64::from_be_bytes(timestamp.try_into().map_err(sct_err)?);
        if !key.valid_at((ts_ms / 1000) as i64) {
            last_err = sct_err("CT log key not valid at the SCT's timestamp");
            continue;
        }
        match key.key.verify(&signed, signature, hash) {
            Ok(()) => valid += 1,
            Err(_) => {
                last_err = sct_err(format!(
                    "SCT signature by log {} does not verify",
                    hex::encode(log_id)
                ))
            }
        }
    }
    if valid == 0 {
        return Err(last_err);
    }
    Ok(valid)
}
