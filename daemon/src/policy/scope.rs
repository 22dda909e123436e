//! Scope patterns and "most specific wins" matching against normalised image references.
//!
//! Specificity, highest first: an exact repository (`docker.io/library/busybox`); then path
//! prefixes `registry/path/**`, longer (more path components) before shorter; then a whole
//! registry (`ghcr.io`, or `ghcr.io/**`); then a wildcard subdomain (`*.example.com`); then the
//! policy default. Two scopes with the same pattern are refused at load time, so there are no ties.

use crate::verify::reference::ImageRef;

/// A parsed scope pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopePattern {
    /// Exactly this repository (`registry/path/repo`), any tag or digest.
    Repository(String),
    /// `registry/path` itself and every repository below it.
    Prefix { registry: String, path: String },
    /// Every repository of one registry.
    Registry(String),
    /// Every registry under a domain: `*.example.com` matches `a.example.com`, `a.b.example.com`.
    Subdomain(String),
}

/// Why a pattern string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {pattern:?}: {reason}")]
pub struct ScopeError {
    pub pattern: String,
    pub reason: &'static str,
}

fn looks_like_registry(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

impl ScopePattern {
    /// Parse a pattern as written in a policy file.
    pub fn parse(pattern: &str) -> Result<Self, ScopeError> {
        let err = |reason| ScopeError {
            pattern: pattern.to_string(),
            reason,
        };
        if let Some(domain) = pattern.strip_prefix("*.") {
            if domain.is_empty() || domain.contains(['/', '*', ':']) || !domain.contains('.') {
                return Err(err(
                    "a wildcard scope is `*.domain.tld` with nothing after the domain",
                ));
            }
            return Ok(ScopePattern::Subdomain(domain.to_ascii_lowercase()));
        }
        if pattern.contains('*') && !pattern.ends_with("/**") {
            return Err(err(
                "`*` is only allowed as a leading `*.` or a trailing `/**`",
            ));
        }
        if let Some(prefix) = pattern.strip_suffix("/**") {
            if prefix.contains('*') {
                return Err(err("only one trailing `/**` is allowed"));
            }
            let (registry, path) = match prefix.split_once('/') {
                Some((r, p)) => (r, p),
                None => (prefix, ""),
            };
            if !looks_like_registry(registry) {
                return Err(err(
                    "a `/**` scope must start with a registry host (e.g. docker.io/library/**)",
                ));
            }
            if path.is_empty() {
                return Ok(ScopePattern::Registry(registry.to_ascii_lowercase()));
            }
            // Validate host and path without Docker Hub's `library/` expansion: a prefix names
            // a namespace, not a repository.
            let r = ImageRef::parse(&format!("{prefix}/x"))
                .map_err(|_| err("invalid registry or path"))?;
            if r.tag.is_some() || r.digest.is_some() || !path.split('/').all(|c| !c.is_empty()) {
                return Err(err("invalid registry or path"));
            }
            let registry = r.registry;
            return Ok(ScopePattern::Prefix {
                registry,
                path: path.to_string(),
            });
        }
        if !pattern.contains('/') && looks_like_registry(pattern) {
            return Ok(ScopePattern::Registry(pattern.to_ascii_lowercase()));
        }
        let r = ImageRef::parse(pattern).map_err(|_| err("not a valid repository reference"))?;
        if r.tag.is_some() || r.digest.is_some() {
            return Err(err(
                "scopes name repositories; tags and digests are not supported",
            ));
        }
        Ok(ScopePattern::Repository(r.name()))
    }

    /// Specificity rank: larger wins.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            ScopePattern::Repository(_) => (4, 0),
            ScopePattern::Prefix { path, .. } => (3, path.split('/').count()),
            ScopePattern::Registry(_) => (2, 0),
            ScopePattern::Subdomain(d) => (1, d.split('.').count()),
        }
    }

    /// Whether `image` falls in this scope.
    pub fn matches(&self, image: &ImageRef) -> bool {
        match self {
            ScopePattern::Repository(name) => image.name() == *name,
            ScopePattern::Prefix { registry, path } => {
                image.registry == *registry
                    && (image.repository == *path
                        || image
                            .repository
                            .strip_prefix(path.as_str())
                            .is_some_and(|r| r.starts_with('/')))
            }
            ScopePattern::Registry(r) => image.registry == *r,
            ScopePattern::Subdomain(d) => {
                let host = image.registry.split(':').next().unwrap_or_default();
                host.strip_suffix(d.as_str())
                    .is_some_and(|h| h.ends_with('.') && h.len() > 1)
            }
        }
    }
}

impl std::fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScopePattern::Repository(n) => write!(f, "{n}"),
            ScopePattern::Prefix { registry, path } => write!(f, "{registry}/{path}/**"),
            ScopePattern::Registry(r) => write!(f, "{r}"),
            ScopePattern::Subdomain(d) => write!(f, "*.{d}"),
        }
    }
}

/// Index of the most specific pattern matching `image`, if any.
pub fn most_specific<'a, I>(patterns: I, image: &ImageRef) -> Option<usize>
where
    I: IntoIterator<Item = &'a ScopePattern>,
{
    patterns
        .into_iter()
        .enumerate()
        .filter(|(_, p)| p.matches(image))
        .max_by_key(|(_, p)| p.specificity())
        .map(|(i, _)| i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<ScopePattern> {
        list.iter()
            .map(|p| ScopePattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn most_specific_scope_wins() {
        let p = pats(&[
            "ghcr.io",
            "ghcr.io/org/**",
            "ghcr.io/org/team/**",
            "ghcr.io/org/team/app",
            "*.example.com",
        ]);
        let pick =
            |r: &str| most_specific(&p, &ImageRef::parse(r).unwrap()).map(|i| p[i].to_string());
        assert_eq!(
            pick("ghcr.io/org/team/app:1").as_deref(),
            Some("ghcr.io/org/team/app")
        );
        assert_eq!(
            pick("ghcr.io/org/team/other").as_deref(),
            Some("ghcr.io/org/team/**")
        );
        assert_eq!(
            pick("ghcr.io/org/team").as_deref(),
            Some("ghcr.io/org/team/**")
        );
        assert_eq!(pick("ghcr.io/org/x").as_deref(), Some("ghcr.io/org/**"));
        assert_eq!(pick("ghcr.io/orgx/y").as_deref(), Some("ghcr.io"));
        assert_eq!(
            pick("registry.example.com/a").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(pick("example.com/a"), None);
        assert_eq!(pick("docker.io/library/busybox"), None);
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        let p = pats(&["busybox", "docker.io/library/**"]);
        assert_eq!(
            p[0],
            ScopePattern::Repository("docker.io/library/busybox".into())
        );
        let img = ImageRef::parse("busybox:latest").unwrap();
        assert_eq!(most_specific(&p, &img), Some(0));
        assert_eq!(
            most_specific(&p, &ImageRef::parse("alpine").unwrap()),
            Some(1)
        );
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "ghcr.io/*/app",
            "library/**",
            "ghcr.io/a:tag",
            "*.com",
            "*.ex*.com",
            "**",
            "ghcr.io/**/**",
        ] {
            assert!(ScopePattern::parse(bad).is_err(), "{bad}");
        }
    }
}
