//! Registry credentials from docker's `config.json` (`auths.<host>.auth` = base64 `user:pass`).
//! Credential helpers are not run: a daemon should not exec per-user helpers.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

/// Username/password per registry host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

/// Why a docker config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{path}: entry for {host} is not base64 user:password")]
    Entry { path: String, host: String },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn normalise_host(h: &str) -> String {
    let h = h
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let h = h.split('/').next().unwrap_or(h);
    match h {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        other => other.to_ascii_lowercase(),
    }
}

impl Credentials {
    /// Read `auths` from a docker config.json.
    pub fn from_docker_config(path: &Path) -> Result<Self, CredentialsError> {
        let p = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| CredentialsError::Read {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        let cfg: DockerConfig =
            serde_json::from_slice(&text).map_err(|e| CredentialsError::Read {
                path: p.clone(),
                detail: e.to_string(),
            })?;
        let mut by_host = HashMap::new();
        for (host, e) in cfg.auths {
            let pair = match (e.auth, e.username, e.password) {
                (Some(a), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| CredentialsError::Entry {
                            path: p.clone(),
                            host: host.clone(),
                        })?;
                    let (u, pw) = raw.split_once(':').ok_or_else(|| CredentialsError::Entry {
                        path: p.clone(),
                        host: host.clone(),
                    })?;
                    (u.to_string(), pw.to_string())
                }
                (None, Some(u), Some(pw)) => (u, pw),
                _ => continue,
            };
            by_host.insert(normalise_host(&host), pair);
        }
        Ok(Credentials { by_host })
    }

    /// Add credentials for a host.
    pub fn insert(&mut self, host: &str, user: &str, password: &str) {
        self.by_host
            .insert(normalise_host(host), (user.into(), password.into()));
    }

    /// Credentials for a registry host, if any.
    pub fn for_host(&self, host: &str) -> Option<&(String, String)> {
        self.by_host.get(&normalise_host(host))
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header value.
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let mut params = HashMap::new();
            let mut rest = rest.trim();
            while !rest.is_empty() {
                let (k, after) = rest.split_once('=')?;
                let after = after.trim_start();
                let (v, next) = if let Some(q) = after.strip_prefix('"') {
                    let end = q.find('"')?;
                    (&q[..end], q[end + 1..].trim_start().trim_start_matches(','))
                } else {
                    match after.split_once(',') {
                        Some((v, n)) => (v, n),
                        None => (after, ""),
                    }
                };
                params.insert(k.trim().to_ascii_lowercase(), v.to_string());
                rest = next.trim();
            }
            Some(Challenge::Bearer {
                realm: params.remove("realm")?,
                service: params.remove("service"),
                scope: params.remove("scope"),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into())
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"127.0.0.1:5000":{"username":"a","password":"b"}}}"#).unwrap();
        let c = Credentials::from_docker_config(&p).unwrap();
        assert_eq!(
            c.for_host("docker.io"),
            Some(&("u".to_string(), "p".to_string()))
        );
        assert_eq!(
            c.for_host("127.0.0.1:5000"),
            Some(&("a".to_string(), "b".to_string()))
        );
        std::fs::write(&p, r#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap();
        assert!(Credentials::from_docker_config(&p).is_err());
    }
}
