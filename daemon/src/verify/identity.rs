//! Certificate identities: what a Fulcio (or BYO-PKI) certificate says about its holder, and the
//! policy's matchers for it. Regular expressions are anchored (whole-string match), unlike
//! cosign's Go `MatchString`, because an unanchored `https://github.com/org/` would also match
//! `https://evil.example/https://github.com/org/`.

use const_oid::ObjectIdentifier;
use der::Decode;
use serde::{Deserialize, Serialize};
use x509_cert::ext::pkix::name::GeneralName;

use super::cert::{Cert, OID_SAN};
use super::error::VerifyError;

/// Deprecated Fulcio OIDC issuer extension: raw string bytes.
pub const OID_ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
/// Current Fulcio OIDC issuer extension: DER UTF8String.
pub const OID_ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");

/// The identity claims of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertIdentity {
    /// Every SAN as text: emails, URIs, DNS names, UTF-8 OtherNames.
    pub subjects: Vec<String>,
    /// OIDC issuer, from 1.3.6.1.4.1.57264.1.8 or else the deprecated .1.1.
    pub issuer: Option<String>,
    /// The type of each SAN in [`Self::subjects`], in the same order.
    #[serde(skip)]
    pub kinds: Vec<SanKind>,
}

/// The type of a subject alternative name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    /// rfc822Name (an e-mail address).
    Email,
    /// uniformResourceIdentifier.
    Uri,
    /// dNSName (a hostname).
    Dns,
    /// otherName (a UTF-8 string, e.g. Fulcio's username).
    Other,
}

fn parse_err(detail: impl std::fmt::Display) -> VerifyError {
    VerifyError::CertParse {
        what: "certificate identity",
        detail: detail.to_string(),
    }
}

impl CertIdentity {
    /// Read the identity from a certificate. Conflicting issuer extensions are refused.
    pub fn from_cert(cert: &Cert) -> Result<Self, VerifyError> {
        let mut subjects = Vec::new();
        let mut kinds = Vec::new();
        if let Some(san) = cert.extension(OID_SAN)? {
            let san = x509_cert::ext::pkix::SubjectAltName::from_der(san).map_err(parse_err)?;
            for name in san.0 {
                let (kind, text) = match name {
                    GeneralName::Rfc822Name(s) => (SanKind::Email, s.to_string()),
                    GeneralName::UniformResourceIdentifier(s) => (SanKind::Uri, s.to_string()),
                    GeneralName::DnsName(s) => (SanKind::Dns, s.to_string()),
                    GeneralName::OtherName(o) => {
                        match o.value.decode_as::<der::asn1::Utf8StringRef<'_>>() {
                            Ok(s) => (SanKind::Other, s.as_str().to_string()),
                            Err(_) => continue,
                        }
                    }
                    _ => continue,
                };
                subjects.push(text);
                kinds.push(kind);
            }
        }
        let v2 = cert
            .extension(OID_ISSUER_V2)?
            .map(|v| {
                der::asn1::Utf8StringRef::from_der(v)
                    .map(|s| s.as_str().to_string())
                    .map_err(parse_err)
            })
            .transpose()?;
        let v1 = cert
            .extension(OID_ISSUER_V1)?
            .map(|v| String::from_utf8(v.to_vec()).map_err(parse_err))
            .transpose()?;
        let issuer = match (v2, v1) {
            (Some(a), Some(b)) if a != b => {
                return Err(parse_err(format!(
                    "issuer extensions disagree: {a:?} vs {b:?}"
                )))
            }
            (Some(a), _) => Some(a),
            (None, b) => b,
        };
        Ok(CertIdentity {
            subjects,
            issuer,
            kinds,
        })
    }

    /// Value of a Fulcio extension (e.g. 1.3.6.1.4.1.57264.1.12 source repository URI) as text:
    /// DER UTF8String for current OIDs, raw bytes for the deprecated 1.1-1.6.
    pub fn extension_text(
        cert: &Cert,
        oid: ObjectIdentifier,
    ) -> Result<Option<String>, VerifyError> {
        let Some(v) = cert.extension(oid)? else {
            return Ok(None);
        };
        if let Ok(s) = der::asn1::Utf8StringRef::from_der(v) {
            return Ok(Some(s.as_str().to_string()));
        }
        String::from_utf8(v.to_vec()).map(Some).map_err(parse_err)
    }
}

/// Exact or (anchored) regular-expression string match.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    Exact(String),
    Regex(regex::Regex),
}

impl StringMatcher {
    /// Build an anchored regex matcher; `pattern` must match the whole string.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map(StringMatcher::Regex)
    }
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatcher::Exact(e) => e == s,
            StringMatcher::Regex(r) => r.is_match(s),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            StringMatcher::Exact(e) => format!("{e:?}"),
            StringMatcher::Regex(r) => format!("/{}/", r.as_str()),
        }
    }
}

/// One allowed signer identity: subject (any SAN) and, when set, issuer and extension values.
#[derive(Debug, Clone)]
pub struct IdentityMatcher {
    pub subject: StringMatcher,
    /// Only SANs of this type count for [`Self::subject`] (containers-policy.json's `pki`
    /// `subjectEmail` matches e-mail SANs only, `subjectHostname` DNS SANs only); `None`: any.
    pub san: Option<SanKind>,
    /// `None` only for BYO-PKI certificates that carry no OIDC issuer; policy files require it
    /// for Fulcio identities.
    pub issuer: Option<StringMatcher>,
    /// Extra certificate extensions that must be present with matching values.
    pub extensions: Vec<(ObjectIdentifier, StringMatcher)>,
}

impl IdentityMatcher {
    /// Exact subject and optional exact issuer.
    pub fn exact(subject: &str, issuer: Option<&str>) -> Self {
        IdentityMatcher {
            subject: StringMatcher::Exact(subject.to_string()),
            san: None,
            issuer: issuer.map(|i| StringMatcher::Exact(i.to_string())),
            extensions: Vec::new(),
        }
    }

    /// Whether a certificate with identity `id` satisfies this matcher.
    pub fn matches(&self, cert: &Cert, id: &CertIdentity) -> Result<bool, VerifyError> {
        let of_kind = |index: usize| match self.san {
            None => true,
            // An identity read without types (deserialised) matches no typed matcher.
            Some(kind) => id.kinds.get(index) == Some(&kind),
        };
        if !id
            .subjects
            .iter()
            .enumerate()
            .any(|(index, s)| of_kind(index) && self.subject.matches(s))
        {
            return Ok(false);
        }
        if let Some(want) = &self.issuer {
            match &id.issuer {
                Some(i) if want.matches(i) => {}
                _ => return Ok(false),
            }
        }
        for (oid, want) in &self.extensions {
            match CertIdentity::extension_text(cert, *oid)? {
                Some(v) if want.matches(&v) => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// Check a certificate against a list of allowed identities (any one suffices).
pub fn check_identity(
    cert: &Cert,
    allowed: &[IdentityMatcher],
) -> Result<CertIdentity, VerifyError> {
    let id = CertIdentity::from_cert(cert)?;
    for m in allowed {
        if m.matches(cert, &id)? {
            return Ok(id);
        }
    }
    Err(VerifyError::Identity {
        subjects: id.subjects,
        issuer: id.issuer,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod san_tests {
    use super::*;

    /// containers-policy.json's `pki` `subjectEmail` matches e-mail SANs only and
    /// `subjectHostname` DNS SANs only: the same text in another SAN type is not that identity.
    #[test]
    fn typed_matchers_count_only_their_san_type() {
        let pem = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/generated/trust/ca.pem"),
        )
        .unwrap();
        let cert = Cert::from_pem(&pem, "test").unwrap();
        let identity = |kind: SanKind, text: &str| CertIdentity {
            subjects: vec![text.to_owned()],
            issuer: None,
            kinds: vec![kind],
        };
        let matcher = |kind: Option<SanKind>, text: &str| IdentityMatcher {
            subject: StringMatcher::Exact(text.to_owned()),
            san: kind,
            issuer: None,
            extensions: Vec::new(),
        };
        let email = matcher(Some(SanKind::Email), "dev@example.com");
        assert!(email
            .matches(&cert, &identity(SanKind::Email, "dev@example.com"))
            .unwrap());
        for other in [SanKind::Uri, SanKind::Dns, SanKind::Other] {
            assert!(!email
                .matches(&cert, &identity(other, "dev@example.com"))
                .unwrap());
        }
        let host = matcher(Some(SanKind::Dns), "signer.example.com");
        assert!(host
            .matches(&cert, &identity(SanKind::Dns, "signer.example.com"))
            .unwrap());
        for other in [SanKind::Uri, SanKind::Email, SanKind::Other] {
            assert!(!host
                .matches(&cert, &identity(other, "signer.example.com"))
                .unwrap());
        }
        // Untyped (imagegate's own `subject`): any SAN, as cosign does.
        assert!(matcher(None, "signer.example.com")
            .matches(&cert, &identity(SanKind::Uri, "signer.example.com"))
            .unwrap());
    }
}
