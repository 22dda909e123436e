//! imagegate's TOML policy format (documented in docs/policy.md). Unknown fields, unknown
//! values and unusable keys or trust files are errors with file, line and field.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::error::{line_col, PolicyError};
use super::scope::ScopePattern;
use super::{Mode, Policy, PolicyHasher, Requirement, Rule};
use crate::verify::witness::{Witness, Witnesses};
use crate::verify::{
    Authority, HashAlg, IdentityMatcher, PublicKey, SignedIdentity, Signer, StringMatcher,
    TrustMaterial, TrustedKey,
};

/// Largest policy file accepted.
const MAX_POLICY_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    #[serde(default)]
    trust: BTreeMap<String, Spanned<RawTrust>>,
    default: Spanned<RawRule>,
    #[serde(default, rename = "scope")]
    scopes: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    trusted_root: Option<Spanned<String>>,
    ca_roots: Option<Spanned<String>>,
    ca_intermediates: Option<Spanned<String>>,
    #[serde(default)]
    rekor_keys: Vec<Spanned<String>>,
    #[serde(default)]
    ctlog_keys: Vec<Spanned<String>>,
    tsa_certs: Option<Spanned<String>>,
    /// Signed-note verifier keys of transparency-log witnesses whose cosignatures checkpoints
    /// must carry.
    #[serde(default)]
    witnesses: Vec<Spanned<String>>,
    witness_threshold: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    pattern: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    require: Spanned<String>,
    threshold: Option<Spanned<i64>>,
    signed_identity: Option<Spanned<RawSignedIdentity>>,
    signature_repository: Option<Spanned<String>>,
    signed_manifest: Option<Spanned<String>>,
    outside_image: Option<Spanned<String>>,
    #[serde(default)]
    keys: Vec<Spanned<RawKey>>,
    #[serde(default)]
    keyless: Vec<Spanned<RawKeyless>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignedIdentity {
    #[serde(rename = "match")]
    kind: Spanned<String>,
    reference: Option<String>,
    repository: Option<String>,
    prefix: Option<String>,
    signed_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Option<String>,
    path: Option<Spanned<String>>,
    data: Option<Spanned<String>>,
    digest: Option<Spanned<String>>,
    #[serde(default)]
    tlog: bool,
    trust: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    name: Option<String>,
    trust: Spanned<String>,
    issuer: Option<Spanned<String>>,
    issuer_regex: Option<Spanned<String>>,
    subject: Option<Spanned<String>>,
    subject_regex: Option<Spanned<String>>,
    #[serde(default)]
    extensions: BTreeMap<String, Spanned<String>>,
    require_sct: Option<bool>,
}

/// Parsing context: the file, its text, where relative paths resolve, and the hash so far.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    dir: PathBuf,
    hasher: PolicyHasher,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, field: &str, message: impl std::fmt::Display) -> PolicyError {
        let (line, column) = line_col(self.text, span.start);
        PolicyError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    /// Read a file the policy references, relative to the policy's directory; its bytes join
    /// the policy hash.
    fn read_ref(&mut self, p: &Spanned<String>, field: &str) -> Result<String, PolicyError> {
        let path = self.dir.join(p.get_ref());
        let text = super::read_bounded(&path, super::MAX_FILE_BYTES).map_err(|e| {
            self.err(
                p.span(),
                field,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        self.hasher.add(&path.to_string_lossy(), text.as_bytes());
        Ok(text)
    }
}

/// Load and validate an imagegate TOML policy.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    parse(path, &Policy::read(path)?)
}

/// Parse policy text as if read from `path` (relative paths resolve beside `path`).
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let mut ctx = Ctx {
        file: path,
        text,
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        hasher: PolicyHasher::default(),
    };
    if text.len() > MAX_POLICY_BYTES {
        return Err(ctx.err(0..0, "(file)", "policy file larger than 1 MiB"));
    }
    ctx.hasher.add("policy", text.as_bytes());
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = text
            .get(span.clone())
            .map(|s| s.trim().chars().take(60).collect::<String>())
            .unwrap_or_default();
        ctx.err(
            span,
            if field.is_empty() { "(syntax)" } else { &field },
            e.message(),
        )
    })?;
    if *raw.version.get_ref() != 1 {
        return Err(ctx.err(
            raw.version.span(),
            "version",
            "only policy version 1 is supported",
        ));
    }

    let mut trusts: BTreeMap<String, Arc<TrustMaterial>> = BTreeMap::new();
    for (name, t) in &raw.trust {
        trusts.insert(name.clone(), Arc::new(trust(&mut ctx, name, t)?));
    }

    if let Some(p) = &raw.default.get_ref().pattern {
        return Err(ctx.err(
            p.span(),
            "default.match",
            "the default rule applies to everything; it takes no `match`",
        ));
    }
    let default = rule(&mut ctx, "default", raw.default.get_ref(), &trusts)?;
    let mut seen = HashSet::new();
    let mut scopes = Vec::new();
    for (i, s) in raw.scopes.iter().enumerate() {
        let r = s.get_ref();
        let Some(p) = &r.pattern else {
            return Err(ctx.err(
                s.span(),
                &format!("scope[{i}].match"),
                "every [[scope]] needs a `match` pattern",
            ));
        };
        let pattern = ScopePattern::parse(p.get_ref())
            .map_err(|e| ctx.err(p.span(), &format!("scope[{i}].match"), e))?;
        if !seen.insert(pattern.clone()) {
            return Err(ctx.err(
                p.span(),
                &format!("scope[{i}].match"),
                format!("scope {pattern} is defined twice"),
            ));
        }
        let rule = rule(&mut ctx, &pattern.to_string(), r, &trusts)?;
        scopes.push((pattern, rule));
    }
    Ok(Policy::new(
        path.to_path_buf(),
        ctx.hasher.finish(),
        default,
        scopes,
    ))
}

fn trust(
    ctx: &mut Ctx<'_>,
    name: &str,
    t: &Spanned<RawTrust>,
) -> Result<TrustMaterial, PolicyError> {
    let f = |k: &str| format!("trust.{name}.{k}");
    let raw = t.get_ref();
    let witnesses = witnesses(ctx, name, raw)?;
    let mut tm = TrustMaterial::default();
    if raw
        .trusted_root
        .as_ref()
        .is_some_and(|p| p.get_ref() == crate::tuf::POLICY_NAME)
    {
        let others = raw.ca_roots.is_some()
            || raw.ca_intermediates.is_some()
            || !raw.rekor_keys.is_empty()
            || !raw.ctlog_keys.is_empty()
            || raw.tsa_certs.is_some();
        if others {
            return Err(ctx.err(
                t.span(),
                &f("trusted_root"),
                "trusted_root = \"public-good\" is the whole Sigstore public-good root, kept current through TUF; it takes no other trust files (name a file `./public-good` to read one called so)",
            ));
        }
        // What the policy means is "whatever TUF serves": the root itself is not hashed in.
        ctx.hasher
            .add(&f("trusted_root"), crate::tuf::POLICY_NAME.as_bytes());
        return Ok(TrustMaterial {
            public_good: true,
            witnesses,
            ..TrustMaterial::default()
        });
    }
    if let Some(p) = &raw.trusted_root {
        let text = ctx.read_ref(p, &f("trusted_root"))?;
        tm.extend(
            TrustMaterial::from_trusted_root_json(text.as_bytes())
                .map_err(|e| ctx.err(p.span(), &f("trusted_root"), e))?,
        );
    }
    if let Some(p) = &raw.ca_roots {
        let text = ctx.read_ref(p, &f("ca_roots"))?;
        tm.add_ca_pem(&text)
            .map_err(|e| ctx.err(p.span(), &f("ca_roots"), e))?;
    }
    if let Some(p) = &raw.ca_intermediates {
        let text = ctx.read_ref(p, &f("ca_intermediates"))?;
        tm.add_intermediates_pem(&text)
            .map_err(|e| ctx.err(p.span(), &f("ca_intermediates"), e))?;
    }
    for p in &raw.rekor_keys {
        let text = ctx.read_ref(p, &f("rekor_keys"))?;
        tm.add_rekor_key_pem(&text)
            .map_err(|e| ctx.err(p.span(), &f("rekor_keys"), e))?;
    }
    for p in &raw.ctlog_keys {
        let text = ctx.read_ref(p, &f("ctlog_keys"))?;
        tm.add_ctlog_key_pem(&text)
            .map_err(|e| ctx.err(p.span(), &f("ctlog_keys"), e))?;
    }
    if let Some(p) = &raw.tsa_certs {
        let text = ctx.read_ref(p, &f("tsa_certs"))?;
        tm.add_tsa_pem(&text)
            .map_err(|e| ctx.err(p.span(), &f("tsa_certs"), e))?;
    }
    if !witnesses.is_empty() && tm.tlogs.is_empty() {
        return Err(ctx.err(
            t.span(),
            &f("witnesses"),
            "witnesses cosign a transparency log's checkpoints: this entry names no log",
        ));
    }
    tm.witnesses = witnesses;
    if tm.cas.is_empty() && tm.tlogs.is_empty() {
        return Err(ctx.err(
            t.span(),
            &format!("trust.{name}"),
            "trust entry names no CA and no transparency log",
        ));
    }
    Ok(tm)
}

/// A trust entry's `witnesses` (signed-note verifier keys) and `witness_threshold` (how many
/// must cosign; all of them when unset).
fn witnesses(ctx: &Ctx<'_>, name: &str, raw: &RawTrust) -> Result<Witnesses, PolicyError> {
    let f = |k: &str| format!("trust.{name}.{k}");
    let keys = raw
        .witnesses
        .iter()
        .map(|w| Witness::from_vkey(w.get_ref()).map_err(|e| ctx.err(w.span(), &f("witnesses"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let threshold = match &raw.witness_threshold {
        None => None,
        Some(n) => Some(
            usize::try_from(*n.get_ref())
                .map_err(|_| ctx.err(n.span(), &f("witness_threshold"), "must be at least 1"))?,
        ),
    };
    let span = raw
        .witness_threshold
        .as_ref()
        .map(|n| n.span())
        .or_else(|| raw.witnesses.first().map(|w| w.span()))
        .unwrap_or_default();
    Witnesses::new(keys, threshold).map_err(|e| ctx.err(span, &f("witness_threshold"), e))
}

fn lookup_trust(
    ctx: &Ctx<'_>,
    trusts: &BTreeMap<String, Arc<TrustMaterial>>,
    name: &Spanned<String>,
    field: &str,
) -> Result<Arc<TrustMaterial>, PolicyError> {
    trusts.get(name.get_ref()).cloned().ok_or_else(|| {
        ctx.err(
            name.span(),
            field,
            format!("no [trust.{}] defined", name.get_ref()),
        )
    })
}

fn rule(
    ctx: &mut Ctx<'_>,
    scope: &str,
    r: &RawRule,
    trusts: &BTreeMap<String, Arc<TrustMaterial>>,
) -> Result<Rule, PolicyError> {
    let at = |k: &str| format!("{scope}.{k}");
    let mode = match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("enforce", _)) => Mode::Enforce,
        Some(("audit", _)) => Mode::Audit,
        Some((other, span)) => {
            return Err(ctx.err(
                span,
                &at("mode"),
                format!("unknown mode {other:?} (audit or enforce)"),
            ))
        }
    };
    let signed_identity = match &r.signed_identity {
        None => SignedIdentity::Any,
        Some(si) => signed_identity(ctx, si, &at("signed_identity"))?,
    };
    let requirement = match r.require.get_ref().as_str() {
        "reject" | "accept" => {
            let extra = r
                .keys
                .first()
                .map(|k| k.span())
                .or(r.keyless.first().map(|k| k.span()))
                .or(r.threshold.as_ref().map(|t| t.span()));
            if let Some(span) = extra {
                return Err(ctx.err(
                    span,
                    &at("require"),
                    "keys, keyless and threshold only apply to require = \"signatures\"",
                ));
            }
            if r.require.get_ref() == "reject" {
                Requirement::Reject
            } else {
                Requirement::Accept
            }
        }
        "signatures" => {
            let mut authorities = Vec::new();
            for (i, k) in r.keys.iter().enumerate() {
                authorities.push(key_authority(
                    ctx,
                    k,
                    &format!("{scope}.keys[{i}]"),
                    trusts,
                    &signed_identity,
                )?);
            }
            for (i, k) in r.keyless.iter().enumerate() {
                authorities.push(keyless_authority(
                    ctx,
                    k,
                    &format!("{scope}.keyless[{i}]"),
                    trusts,
                    &signed_identity,
                )?);
            }
            if authorities.is_empty() {
                return Err(ctx.err(
                    r.require.span(),
                    &at("require"),
                    "require = \"signatures\" needs at least one [[keys]] or [[keyless]] entry",
                ));
            }
            let threshold = match &r.threshold {
                None => 1,
                Some(t) if *t.get_ref() >= 1 && (*t.get_ref() as usize) <= authorities.len() => {
                    *t.get_ref() as usize
                }
                Some(t) => {
                    return Err(ctx.err(
                        t.span(),
                        &at("threshold"),
                        format!("threshold must be between 1 and {}", authorities.len()),
                    ))
                }
            };
            Requirement::Signatures {
                authorities,
                threshold,
            }
        }
        other => {
            return Err(ctx.err(
                r.require.span(),
                &at("require"),
                format!("unknown requirement {other:?} (reject, accept or signatures)"),
            ))
        }
    };
    let signature_repository = match &r.signature_repository {
        None => None,
        Some(repo) => {
            let parsed = crate::verify::ImageRef::parse(repo.get_ref())
                .ok()
                .filter(|i| i.tag.is_none() && i.digest.is_none())
                .ok_or_else(|| {
                    ctx.err(
                        repo.span(),
                        &at("signature_repository"),
                        "expected registry/repository without tag or digest",
                    )
                })?;
            Some(parsed.name())
        }
    };
    let signed_manifest = match r
        .signed_manifest
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("either", _)) => super::SignedManifest::Either,
        Some(("index", _)) => super::SignedManifest::Index,
        Some(("platform", _)) => super::SignedManifest::Platform,
        Some((other, span)) => {
            return Err(ctx.err(
                span,
                &at("signed_manifest"),
                format!("unknown value {other:?} (index, platform or either)"),
            ))
        }
    };
    if signed_manifest != super::SignedManifest::Either
        && !matches!(requirement, Requirement::Signatures { .. })
    {
        let span = r.signed_manifest.as_ref().map_or(0..0, Spanned::span);
        return Err(ctx.err(
            span,
            &at("signed_manifest"),
            "only with require = \"signatures\"",
        ));
    }
    let outside_image = match r
        .outside_image
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None => None,
        Some(("allow", _)) => Some(crate::enforce::OutsideImage::Allow),
        Some(("deny", _)) => Some(crate::enforce::OutsideImage::Deny),
        Some((other, span)) => {
            return Err(ctx.err(
                span,
                &at("outside_image"),
                format!("unknown value {other:?} (allow or deny)"),
            ))
        }
    };
    Ok(Rule {
        scope: scope.to_string(),
        mode,
        requirement,
        signature_repository,
        signed_manifest,
        outside_image,
    })
}

fn signed_identity(
    ctx: &Ctx<'_>,
    si: &Spanned<RawSignedIdentity>,
    field: &str,
) -> Result<SignedIdentity, PolicyError> {
    let r = si.get_ref();
    let need = |v: &Option<String>, what: &str| {
        v.clone().ok_or_else(|| {
            ctx.err(
                si.span(),
                field,
                format!("match = {:?} needs `{what}`", r.kind.get_ref()),
            )
        })
    };
    Ok(match r.kind.get_ref().as_str() {
        "any" => SignedIdentity::Any,
        "repository" => SignedIdentity::MatchRepository,
        "repo-digest-or-exact" => SignedIdentity::MatchRepoDigestOrExact,
        "exact" => SignedIdentity::MatchExact,
        "exact-reference" => SignedIdentity::ExactReference(need(&r.reference, "reference")?),
        "exact-repository" => SignedIdentity::ExactRepository(need(&r.repository, "repository")?),
        "remap" => SignedIdentity::Remap {
            prefix: need(&r.prefix, "prefix")?,
            signed_prefix: need(&r.signed_prefix, "signed_prefix")?,
        },
        other => {
            return Err(ctx.err(
                r.kind.span(),
                field,
                format!("unknown signed_identity match {other:?}"),
            ))
        }
    })
}

fn key_authority(
    ctx: &mut Ctx<'_>,
    k: &Spanned<RawKey>,
    field: &str,
    trusts: &BTreeMap<String, Arc<TrustMaterial>>,
    si: &SignedIdentity,
) -> Result<Authority, PolicyError> {
    let r = k.get_ref();
    let (pem, span) = match (&r.path, &r.data) {
        (Some(p), None) => (ctx.read_ref(p, &format!("{field}.path"))?, p.span()),
        (None, Some(d)) => {
            ctx.hasher.add("inline key", d.get_ref().as_bytes());
            (d.get_ref().clone(), d.span())
        }
        _ => return Err(ctx.err(k.span(), field, "give exactly one of `path` or `data`")),
    };
    let hash = match r.digest.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None => None,
        Some(("sha256", _)) => Some(HashAlg::Sha256),
        Some(("sha384", _)) => Some(HashAlg::Sha384),
        Some(("sha512", _)) => Some(HashAlg::Sha512),
        Some((other, s)) => {
            return Err(ctx.err(
                s,
                &format!("{field}.digest"),
                format!("unknown digest {other:?}"),
            ))
        }
    };
    let keys = PublicKey::all_from_pem(&pem).map_err(|e| ctx.err(span.clone(), field, e))?;
    let trust = match (&r.trust, r.tlog) {
        (Some(t), tlog) => {
            let tm = lookup_trust(ctx, trusts, t, &format!("{field}.trust"))?;
            if tlog && tm.tlogs.is_empty() && !tm.public_good {
                return Err(ctx.err(
                    t.span(),
                    &format!("{field}.trust"),
                    "tlog = true needs Rekor keys in this trust entry",
                ));
            }
            tm
        }
        (None, true) => {
            return Err(ctx.err(
                k.span(),
                field,
                "tlog = true needs `trust` naming the Rekor keys",
            ))
        }
        (None, false) => Arc::new(TrustMaterial::default()),
    };
    Ok(Authority {
        name: r.name.clone().unwrap_or_else(|| field.to_string()),
        signer: Signer::Keys(
            keys.into_iter()
                .map(|key| TrustedKey { key, hash })
                .collect(),
        ),
        trust,
        require_tlog: r.tlog,
        signed_identity: si.clone(),
    })
}

fn matcher(
    ctx: &Ctx<'_>,
    exact: &Option<Spanned<String>>,
    regex: &Option<Spanned<String>>,
    field: &str,
    span: Range<usize>,
) -> Result<Option<StringMatcher>, PolicyError> {
    match (exact, regex) {
        (Some(e), None) => Ok(Some(StringMatcher::Exact(e.get_ref().clone()))),
        (None, Some(r)) => StringMatcher::regex(r.get_ref()).map(Some).map_err(|e| {
            ctx.err(
                r.span(),
                &format!("{field}_regex"),
                format!("invalid regular expression: {e}"),
            )
        }),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ctx.err(
            span,
            field,
            format!("give `{field}` or `{field}_regex`, not both"),
        )),
    }
}

fn keyless_authority(
    ctx: &mut Ctx<'_>,
    k: &Spanned<RawKeyless>,
    field: &str,
    trusts: &BTreeMap<String, Arc<TrustMaterial>>,
    si: &SignedIdentity,
) -> Result<Authority, PolicyError> {
    let r = k.get_ref();
    let trust = lookup_trust(ctx, trusts, &r.trust, &format!("{field}.trust"))?;
    let subject = matcher(
        ctx,
        &r.subject,
        &r.subject_regex,
        &format!("{field}.subject"),
        k.span(),
    )?
    .ok_or_else(|| {
        ctx.err(
            k.span(),
            field,
            "keyless needs `subject` or `subject_regex`",
        )
    })?;
    let issuer = matcher(
        ctx,
        &r.issuer,
        &r.issuer_regex,
        &format!("{field}.issuer"),
        k.span(),
    )?
    .ok_or_else(|| {
        ctx.err(
            k.span(),
            field,
            "keyless needs `issuer` or `issuer_regex` (the OIDC issuer)",
        )
    })?;
    let mut extensions = Vec::new();
    for (oid, v) in &r.extensions {
        let parsed = parse_oid(oid).ok_or_else(|| {
            ctx.err(
                v.span(),
                &format!("{field}.extensions"),
                format!("{oid:?} is not an OID"),
            )
        })?;
        extensions.push((parsed, StringMatcher::Exact(v.get_ref().clone())));
    }
    // The public-good root's contents are only known once fetched (they have all of these).
    if !trust.public_good && (trust.cas.is_empty() || trust.tlogs.is_empty()) {
        return Err(ctx.err(
            r.trust.span(),
            &format!("{field}.trust"),
            "keyless needs a trust entry with CAs and Rekor keys",
        ));
    }
    let require_sct = r.require_sct.unwrap_or(true);
    if require_sct && trust.ctlogs.is_empty() && !trust.public_good {
        return Err(ctx.err(
            r.trust.span(),
            &format!("{field}.trust"),
            "require_sct needs CT log keys in the trust entry (or require_sct = false)",
        ));
    }
    Ok(Authority {
        name: r.name.clone().unwrap_or_else(|| field.to_string()),
        signer: Signer::Certificate {
            identities: vec![IdentityMatcher {
                san: None,
                subject,
                issuer: Some(issuer),
                extensions,
            }],
            require_sct,
        },
        trust,
        require_tlog: true,
        signed_identity: si.clone(),
    })
}

/// An OID in dotted form. Every arc is checked to be a decimal `u32` first: const-oid's own
/// parser accumulates digits without an overflow check (a panic in debug builds, a wrong OID
/// otherwise; the policy fuzz target found it).
fn parse_oid(text: &str) -> Option<const_oid::ObjectIdentifier> {
    let arcs_fit = text.split('.').all(|arc| {
        !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()) && arc.parse::<u32>().is_ok()
    });
    if !arcs_fit {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod oid_tests {
    #[test]
    fn oids_with_arcs_past_u32_are_refused_not_a_panic() {
        assert!(super::parse_oid("1.3.6.1.4.1.57264.1.1").is_some());
        assert!(super::parse_oid("1.3.6.1.4.1.99999999999999999999").is_none());
        assert!(super::parse_oid("1.3.6.1.4.1.4294967296").is_none());
        assert!(super::parse_oid("1..3").is_none());
        assert!(super::parse_oid("1.+3").is_none());
        assert!(super::parse_oid("").is_none());
        // The first two arcs are encoded as one (40 * first + second).
        let _ = super::parse_oid("2.4294967295");
        let _ = super::parse_oid("1.4294967295.7");
    }
}

#[cfg(test)]
mod trust_entry_tests {
    use super::*;
    use crate::verdict::{evaluate, Candidate, Outcome, SignatureSource};
    use crate::verify::{FailureKind, ImageRef};

    const KEYLESS: &str = "[default]\nrequire = \"signatures\"\n[[default.keyless]]\n\
        trust = \"sigstore\"\nissuer = \"https://accounts.example\"\nsubject = \"me@example.com\"\n";

    fn policy(trust: &str) -> Result<Policy, PolicyError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.toml");
        parse(
            &path,
            &format!("version = 1\n[trust.sigstore]\n{trust}\n{KEYLESS}"),
        )
    }

    #[test]
    fn public_good_names_the_tuf_root_and_nothing_else() {
        let p = policy("trusted_root = \"public-good\"").expect("public-good policy");
        assert!(p.uses_public_good());
        let Requirement::Signatures { authorities, .. } = &p.default.requirement else {
            panic!("not signatures");
        };
        assert!(authorities[0].trust.public_good);
        assert!(authorities[0].trust.cas.is_empty() && authorities[0].trust.tlogs.is_empty());
        // The hash names it, and is stable (no file, no fetched root in it).
        assert_eq!(
            p.hash,
            policy("trusted_root = \"public-good\"")
                .expect("again")
                .hash
        );
        // Nothing else beside it.
        let error = policy("trusted_root = \"public-good\"\nrekor_keys = [\"rekor.pub\"]")
            .expect_err("public-good with other files");
        let text = error.to_string();
        assert!(
            text.contains("trust.sigstore.trusted_root") && text.contains("no other trust files"),
            "{text}"
        );
        // A file of that name is `./public-good`: read as a file (here: missing).
        let error = policy("trusted_root = \"./public-good\"").expect_err("no such file");
        assert!(error.to_string().contains("cannot read"), "{error}");
        // A policy with only file-based trust does not use it.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("trust/sigstore-public-good/trusted_root.json");
        let p = policy(&format!("trusted_root = \"{}\"", root.display())).expect("file root");
        assert!(!p.uses_public_good());
    }

    /// With no TUF client in this process (unit tests install none), an image needing the
    /// public-good root gets an `error` verdict with a trust-root reason, never `trusted`.
    #[test]
    fn no_good_root_is_an_error_verdict() {
        let p = policy("trusted_root = \"public-good\"").expect("public-good policy");
        let image = ImageRef::parse("registry.example/app:1").expect("reference");
        let digest = format!("sha256:{}", "cd".repeat(32));
        let sources = [SignatureSource {
            label: "referrer:test".into(),
            signed_digest: digest.clone(),
            candidate: Candidate::Bundle(b"{}".to_vec()),
        }];
        let verdict = evaluate(&p, &image, &digest, &sources);
        assert_eq!(verdict.outcome, Outcome::Error, "{verdict:?}");
        let reason = verdict
            .reasons
            .iter()
            .find(|r| r.kind == Some(FailureKind::TrustRoot))
            .expect("a trust-root reason");
        assert!(reason.detail.contains("no TUF client"), "{}", reason.detail);
        // No signatures at all: still an error (the root is what is missing).
        assert_eq!(evaluate(&p, &image, &digest, &[]).outcome, Outcome::Error);
    }

    /// `witnesses` takes signed-note verifier keys, checked when the policy loads: a bad key or a
    /// threshold outside 1..=N is a policy error naming the field. With the public-good root, the witnesses stay with the authority's trust.
    #[test]
    fn witnesses_are_verifier_keys_checked_at_load() {
        use crate::verify::witness::testing::TestWitness;
        let (a, b) = (
            TestWitness::new("witness.example/a", 1).vkey(4),
            TestWitness::new("witness.example/b", 2).vkey(4),
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("trust/sigstore-public-good/trusted_root.json");
        let file_root = format!("trusted_root = \"{}\"", root.display());
        let trust_of = |p: &Policy| {
            let Requirement::Signatures { authorities, .. } = &p.default.requirement else {
                panic!("not signatures");
            };
            Arc::clone(&authorities[0].trust)
        };

        let p = policy(&format!("{file_root}\nwitnesses = [\"{a}\", \"{b}\"]")).expect("two");
        let trust = trust_of(&p);
        assert_eq!(trust.witnesses.keys.len(), 2);
        assert_eq!(trust.witnesses.threshold, 2, "all of them by default");
        let p = policy(&format!(
            "{file_root}\nwitnesses = [\"{a}\", \"{b}\"]\nwitness_threshold = 1"
        ))
        .expect("one of two");
        assert_eq!(trust_of(&p).witnesses.threshold, 1);
        assert!(policy(&file_root)
            .map(|p| trust_of(&p).witnesses.is_empty())
            .expect("none"));

        for (text, field, words) in [
            (
                format!("witnesses = [\"{a}x\"]"),
                "trust.sigstore.witnesses",
                "witness verifier key",
            ),
            (
                format!("witnesses = [\"{a}\"]\nwitness_threshold = 2"),
                "trust.sigstore.witness_threshold",
                "not between 1 and the 1 witnesses",
            ),
            (
                format!("witnesses = [\"{a}\"]\nwitness_threshold = -1"),
                "trust.sigstore.witness_threshold",
                "at least 1",
            ),
            (
                "witness_threshold = 1".to_owned(),
                "trust.sigstore.witness_threshold",
                "needs witnesses",
            ),
        ] {
            let error = policy(&format!("{file_root}\n{text}"))
                .expect_err(&text)
                .to_string();
            assert!(
                error.contains(field) && error.contains(words),
                "{text}: {error}"
            );
        }

        let p = policy(&format!(
            "trusted_root = \"public-good\"\nwitnesses = [\"{a}\"]"
        ))
        .expect("public-good with a witness");
        let trust = trust_of(&p);
        assert!(trust.public_good);
        assert_eq!(trust.witnesses.keys[0].name, "witness.example/a");
    }
}
