//! RFC 3161 timestamps (sigstore bundle `timestampVerificationData`): a trusted timestamping
//! authority's signed statement that a signature existed at a time. It is a signing-time source
//! besides the Rekor SET, and the only one for logs without SETs.

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use const_oid::ObjectIdentifier;
use der::asn1::{GeneralizedTime, OctetString};
use der::{Any, Decode, Encode, Sequence};
use spki::AlgorithmIdentifierOwned;

use super::cert::{verify_chain_for, Cert, OID_EKU_TIME_STAMPING};
use super::error::VerifyError;
use super::keys::HashAlg;
use super::trust::TrustMaterial;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const OID_ATTR_CONTENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_ATTR_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const OID_SKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

/// Largest timestamp token we parse.
pub const MAX_TIMESTAMP_BYTES: usize = 64 << 10;

fn ts_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::Timestamp {
        detail: detail.to_string(),
    }
}

#[derive(Sequence)]
struct MessageImprint {
    hash_algorithm: AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

fn digest_alg(oid: ObjectIdentifier) -> Result<HashAlg, VerifyError> {
    match oid {
        OID_SHA256 => Ok(HashAlg::Sha256),
        OID_SHA384 => Ok(HashAlg::Sha384),
        OID_SHA512 => Ok(HashAlg::Sha512),
        other => Err(ts_err(format!("unsupported digest algorithm {other}"))),
    }
}

/// The signature algorithm's digest (ecdsa-with-SHA*, sha*WithRSAEncryption), else for a bare
/// key algorithm (id-ecPublicKey, rsaEncryption, Ed25519: some TSAs write those) the
/// SignerInfo's digest algorithm. Any other algorithm is refused, not guessed.
fn signature_hash(sig_alg: ObjectIdentifier, digest: HashAlg) -> Result<HashAlg, VerifyError> {
    match sig_alg.to_string().as_str() {
        "1.2.840.10045.4.3.2" | "1.2.840.113549.1.1.11" => Ok(HashAlg::Sha256),
        "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => Ok(HashAlg::Sha384),
        "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => Ok(HashAlg::Sha512),
        "1.2.840.10045.2.1" | "1.2.840.113549.1.1.1" | "1.3.101.112" => Ok(digest),
        other => Err(ts_err(format!(
            "unsupported timestamp signature algorithm {other}"
        ))),
    }
}

/// Accept a TimeStampResp (status granted) or a bare TimeStampToken (ContentInfo).
fn token(bytes: &[u8]) -> Result<ContentInfo, VerifyError> {
    if let Ok(ci) = ContentInfo::from_der(bytes) {
        return Ok(ci);
    }
    let parts: Vec<Any> =
        Vec::from_der(bytes).map_err(|e| ts_err(format!("not a TimeStampResp: {e}")))?;
    let [status, tok] = parts.as_slice() else {
        return Err(ts_err("TimeStampResp without a token"));
    };
    let status: Vec<Any> = status.decode_as().map_err(ts_err)?;
    let code: u32 = status
        .first()
        .ok_or_else(|| ts_err("empty PKIStatusInfo"))?
        .decode_as()
        .map_err(ts_err)?;
    if code > 1 {
        return Err(ts_err(format!(
            "timestamp request was not granted (status {code})"
        )));
    }
    tok.decode_as().map_err(ts_err)
}

/// Verify a timestamp token over `signature` against the trust material's TSAs. Returns the
/// timestamp's time (Unix seconds).
pub fn verify_timestamp(
    bytes: &[u8],
    signature: &[u8],
    trust: &TrustMaterial,
) -> Result<i64, VerifyError> {
    if bytes.len() > MAX_TIMESTAMP_BYTES {
        return Err(ts_err("timestamp token too large"));
    }
    if trust.tsas.is_empty() {
        return Err(ts_err("no timestamping authority is trusted"));
    }
    let ci = token(bytes)?;
    if ci.content_type != OID_SIGNED_DATA {
        return Err(ts_err("token is not CMS SignedData"));
    }
    let sd: SignedData = ci.content.decode_as().map_err(ts_err)?;
    if sd.encap_content_info.econtent_type != OID_TST_INFO {
        return Err(ts_err("token does not carry a TSTInfo"));
    }
    let tst_der = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| ts_err("token without content"))?
        .decode_as::<OctetString>()
        .map_err(ts_err)?
        .into_bytes();

    // TSTInfo: version, policy, messageImprint, serialNumber, genTime, optional fields.
    let fields: Vec<Any> = Vec::from_der(&tst_der).map_err(ts_err)?;
    if fields.len() < 5 {
        return Err(ts_err("TSTInfo too short"));
    }
    let version: u8 = fields[0].decode_as().map_err(ts_err)?;
    if version != 1 {
        return Err(ts_err(format!("TSTInfo version {version}")));
    }
    let imprint: MessageImprint = fields[2].decode_as().map_err(ts_err)?;
    let h = digest_alg(imprint.hash_algorithm.oid)?;
    if imprint.hashed_message.as_bytes() != h.digest(signature).as_slice() {
        return Err(ts_err(
            "timestamp is over another signature (message imprint differs)",
        ));
    }
    let gen_time: GeneralizedTime = fields[4].decode_as().map_err(ts_err)?;
    let at = gen_time.to_unix_duration().as_secs() as i64;

    let [si] = sd.signer_infos.0.as_slice() else {
        return Err(ts_err("token must have exactly one signer"));
    };
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| ts_err("signer without signed attributes"))?;
    let attr = |oid: ObjectIdentifier| -> Result<&Any, VerifyError> {
        let a = attrs
            .iter()
            .find(|a| a.oid == oid)
            .ok_or_else(|| ts_err(format!("missing signed attribute {oid}")))?;
        match a.values.as_slice() {
            [v] => Ok(v),
            _ => Err(ts_err(format!(
                "signed attribute {oid} must have one value"
            ))),
        }
    };
    let ct: ObjectIdentifier = attr(OID_ATTR_CONTENT_TYPE)?.decode_as().map_err(ts_err)?;
    if ct != OID_TST_INFO {
        return Err(ts_err("signed content-type attribute is not TSTInfo"));
    }
    let md: OctetString = attr(OID_ATTR_MESSAGE_DIGEST)?.decode_as().map_err(ts_err)?;
    let dh = digest_alg(si.digest_alg.oid)?;
    if md.as_bytes() != dh.digest(&tst_der).as_slice() {
        return Err(ts_err(
            "message-digest attribute does not match the TSTInfo",
        ));
    }

    // The signer: an embedded certificate or one from the trusted TSA chains.
    let mut pool: Vec<Cert> = Vec::new();
    for c in sd.certificates.iter().flat_map(|s| s.0.iter()) {
        if let cms::cert::CertificateChoices::Certificate(c) = c {
            pool.push(Cert::from_der(
                &c.to_der().map_err(ts_err)?,
                "timestamp certificate",
            )?);
        }
    }
    let candidates: Vec<Cert> = pool
        .iter()
        .cloned()
        .chain(trust.tsas.iter().map(|a| a.cert.clone()))
        .collect();
    let signer = candidates
        .iter()
        .find(|c| is_signer(c, &si.sid))
        .ok_or_else(|| ts_err("signer certificate not found"))?;
    let signed = attrs.to_der().map_err(ts_err)?;
    let sig_hash = signature_hash(si.signature_algorithm.oid, dh)?;
    signer
        .public_key()
        .verify(&signed, si.signature.as_bytes(), sig_hash)
        .map_err(|_| ts_err("timestamp signature does not verify"))?;
    verify_chain_for(signer, &pool, &trust.tsas, at, OID_EKU_TIME_STAMPING)
        .map_err(|e| ts_err(format!("timestamping authority not trusted: {e}")))?;
    Ok(at)
}

fn is_signer(cert: &Cert, sid: &SignerIdentifier) -> bool {
    let tbs = &cert.parsed().tbs_certificate;
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            ias.issuer == tbs.issuer && ias.serial_number == tbs.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => cert
            .extension(OID_SKI)
            .ok()
            .flatten()
            .and_then(|v| OctetString::from_der(v).ok())
            .is_some_and(|v| v.as_bytes() == ski.0.as_bytes()),
    }
}
