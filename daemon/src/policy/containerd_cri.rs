//! The policy a widely shared tutorial tells users to put in `/etc/containerd/config.toml`
//! (no containerd release reads it):
//!
//! ```toml
//! [plugins."io.containerd.grpc.v1.cri".containerd.policy.v1]
//! [[plugins."io.containerd.grpc.v1.cri".containerd.policy.v1.signature_policy]]
//! all = true
//! required = ["cosign"]
//! [[plugins."io.containerd.grpc.v1.cri".containerd.policy.v1.signature_policy.identity]]
//! dockerpolicy = "ghcr.io/example/alpine-signed"   # image name prefix
//! public_key = "-----BEGIN PUBLIC KEY-----\n..."    # cosign public key, PEM
//! ```
//!
//! imagegate's `policy` may name such a file: only that section is read (the rest of
//! containerd's configuration is ignored), with these semantics: `all = true` covers every image;
//! `required = ["cosign"]` requires a valid cosign signature; each `identity` trusts its
//! `public_key` for references under its `dockerpolicy` prefix (on path-segment boundaries:
//! `ghcr.io/example/alpine-signed` covers that repository and those below it, not
//! `ghcr.io/example/alpine-signed-2`; a short name is Docker Hub's, as `docker pull` reads it);
//! an image under several prefixes is trusted by any of their keys; whatever no identity covers
//! is rejected. The signature's claimed repository must be the image's (cosign signs it), so a
//! signature copied from another repository does not vouch. Everything is in enforce mode.
//! Unknown keys, values or required types are errors naming the line.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::error::{line_col, PolicyError};
use super::scope::ScopePattern;
use super::{Mode, Policy, PolicyHasher, Requirement, Rule, SignedManifest};
use crate::verify::{
    Authority, ImageRef, PublicKey, SignedIdentity, Signer, TrustMaterial, TrustedKey,
};

/// The section's dotted name, for messages.
pub const SECTION: &str = "plugins.\"io.containerd.grpc.v1.cri\".containerd.policy.v1";

/// Whether `text` is a containerd configuration (a top-level `plugins` table) rather than an
/// imagegate policy.
#[must_use]
pub fn is_containerd_config(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|table| table.get("plugins").is_some_and(toml::Value::is_table))
}

// The path to the section: every level ignores what else it holds.
#[derive(Deserialize)]
struct Root {
    plugins: Option<Plugins>,
}

#[derive(Deserialize)]
struct Plugins {
    #[serde(rename = "io.containerd.grpc.v1.cri")]
    cri: Option<Cri>,
}

#[derive(Deserialize)]
struct Cri {
    containerd: Option<CriContainerd>,
}

#[derive(Deserialize)]
struct CriContainerd {
    policy: Option<Versions>,
}

#[derive(Deserialize)]
struct Versions {
    v1: Option<Spanned<V1>>,
}

// The section itself: strict.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct V1 {
    #[serde(default)]
    signature_policy: Vec<Spanned<SignaturePolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignaturePolicy {
    all: Option<Spanned<bool>>,
    required: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    identity: Vec<Spanned<Identity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    dockerpolicy: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
}

/// Loads the section from containerd configuration text read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let err = |span: std::ops::Range<usize>, field: &str, message: &str| {
        let (line, column) = line_col(text, span.start);
        PolicyError::Invalid {
            file: path.to_path_buf(),
            line,
            column,
            field: field.to_owned(),
            message: message.to_owned(),
        }
    };
    let root: Root = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = text
            .get(span.clone())
            .map(|s| s.trim().chars().take(60).collect::<String>())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| SECTION.to_owned());
        err(span, &field, e.message())
    })?;
    let section = root
        .plugins
        .and_then(|p| p.cri)
        .and_then(|c| c.containerd)
        .and_then(|c| c.policy)
        .and_then(|p| p.v1)
        .ok_or_else(|| {
            err(
                0..0,
                SECTION,
                "this containerd configuration has no such section: imagegate reads its policy from it and from nothing else in the file",
            )
        })?;
    let mut hasher = PolicyHasher::default();
    // The whole file: a change anywhere in it is a new policy (verdicts are made again).
    hasher.add("containerd config", text.as_bytes());
    // (normalised prefix, authority) for every identity.
    let mut identities: Vec<(String, Authority)> = Vec::new();
    for (i, policy) in section.get_ref().signature_policy.iter().enumerate() {
        let field = format!("{SECTION}.signature_policy[{i}]");
        let p = policy.get_ref();
        match &p.all {
            Some(all) if *all.get_ref() => {}
            Some(all) => {
                return Err(err(
                    all.span(),
                    &format!("{field}.all"),
                    "only `all = true` (every image) is understood",
                ))
            }
            None => {
                return Err(err(
                    policy.span(),
                    &format!("{field}.all"),
                    "`all = true` is required: it is the only scope this format has",
                ))
            }
        }
        match &p.required {
            Some(required) if !required.get_ref().is_empty() => {
                for kind in required.get_ref() {
                    if kind.get_ref() != "cosign" {
                        return Err(err(
                            kind.span(),
                            &format!("{field}.required"),
                            &format!(
                                "signature type {:?} is not supported: only \"cosign\"",
                                kind.get_ref()
                            ),
                        ));
                    }
                }
            }
            Some(required) => {
                return Err(err(
                    required.span(),
                    &format!("{field}.required"),
                    "an empty list requires nothing: write required = [\"cosign\"]",
                ))
            }
            None => {
                return Err(err(
                    policy.span(),
                    &format!("{field}.required"),
                    "`required = [\"cosign\"]` is missing",
                ))
            }
        }
        for (j, identity) in p.identity.iter().enumerate() {
            let field = format!("{field}.identity[{j}]");
            let id = identity.get_ref();
            let prefix = id.dockerpolicy.as_ref().ok_or_else(|| {
                err(
                    identity.span(),
                    &format!("{field}.dockerpolicy"),
                    "every identity needs `dockerpolicy` (an image name prefix)",
                )
            })?;
            let pem = id.public_key.as_ref().ok_or_else(|| {
                err(
                    identity.span(),
                    &format!("{field}.public_key"),
                    "every identity needs `public_key` (a cosign public key, PEM)",
                )
            })?;
            let normalised = normalise_prefix(prefix.get_ref()).map_err(|message| {
                err(prefix.span(), &format!("{field}.dockerpolicy"), &message)
            })?;
            let keys = PublicKey::all_from_pem(pem.get_ref())
                .map_err(|e| err(pem.span(), &format!("{field}.public_key"), &e.to_string()))?;
            let (line, _) = line_col(text, identity.span().start);
            identities.push((
                normalised.clone(),
                Authority {
                    name: format!("{normalised} (line {line})"),
                    signer: Signer::Keys(
                        keys.into_iter()
                            .map(|key| TrustedKey { key, hash: None })
                            .collect(),
                    ),
                    trust: Arc::new(TrustMaterial::default()),
                    require_tlog: false,
                    signed_identity: SignedIdentity::MatchRepository,
                },
            ));
        }
    }
    let rule = |scope: String, requirement| Rule {
        scope,
        mode: Mode::Enforce,
        requirement,
        signature_repository: None,
        signed_manifest: SignedManifest::Either,
        outside_image: None,
    };
    // One scope per prefix; an image under nested prefixes is trusted by any of their keys.
    let mut prefixes: Vec<&String> = identities.iter().map(|(p, _)| p).collect();
    prefixes.sort();
    prefixes.dedup();
    let mut scopes = Vec::new();
    for prefix in prefixes {
        let authorities: Vec<Authority> = identities
            .iter()
            .filter(|(outer, _)| covers(outer, prefix))
            .map(|(_, authority)| authority.clone())
            .collect();
        let pattern = ScopePattern::parse(&format!("{prefix}/**"))
            .map_err(|e| err(section.span(), SECTION, &e.to_string()))?;
        scopes.push((
            pattern.clone(),
            rule(
                pattern.to_string(),
                Requirement::Signatures {
                    authorities,
                    threshold: 1,
                },
            ),
        ));
    }
    Ok(Policy::new(
        path.to_path_buf(),
        hasher.finish(),
        rule("default".to_owned(), Requirement::Reject),
        scopes,
    ))
}

/// `registry[/path]` of a `dockerpolicy` prefix, normalised as image names are (`alpine` is
/// `docker.io/library/alpine`, `example/app` is `docker.io/example/app`).
fn normalise_prefix(prefix: &str) -> Result<String, String> {
    let prefix = prefix.trim_end_matches('/');
    let first = prefix.split('/').next().unwrap_or_default();
    let registry_only = !prefix.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if registry_only {
        return Ok(first.to_ascii_lowercase());
    }
    let image = ImageRef::parse(prefix)
        .map_err(|e| format!("{prefix:?} is not an image name prefix: {}", e.reason))?;
    if image.tag.is_some() || image.digest.is_some() {
        return Err(format!(
            "{prefix:?} names a tag or digest: a prefix is a registry and repository path"
        ));
    }
    Ok(image.name())
}

/// Whether prefix `outer` covers prefix `inner` (equal, or an ancestor on a `/` boundary).
fn covers(outer: &str, inner: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_normalise_and_cover_on_segment_boundaries() {
        assert_eq!(
            normalise_prefix("ghcr.io/example/alpine-signed").unwrap(),
            "ghcr.io/example/alpine-signed"
        );
        assert_eq!(
            normalise_prefix("alpine").unwrap(),
            "docker.io/library/alpine"
        );
        assert_eq!(
            normalise_prefix("example/app").unwrap(),
            "docker.io/example/app"
        );
        assert_eq!(normalise_prefix("ghcr.io").unwrap(), "ghcr.io");
        assert_eq!(
            normalise_prefix("127.0.0.1:5000/a/").unwrap(),
            "127.0.0.1:5000/a"
        );
        assert!(normalise_prefix("ghcr.io/a:1").is_err());
        assert!(covers("ghcr.io/a", "ghcr.io/a/b"));
        assert!(covers("ghcr.io", "ghcr.io/a"));
        assert!(!covers("ghcr.io/a", "ghcr.io/ab"));
    }
}
