//! A bounded registry HTTP client: per-request timeout, per-image request budget, size limits
//! enforced while streaming, token/basic authentication, digest checks on content addressed
//! by digest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::debug;

use super::auth::{parse_challenge, Challenge};
use super::{DiscoverError, DiscoveryConfig};

/// Manifest media types we ask for.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Shared HTTP client and configuration.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    pub(crate) cfg: Arc<DiscoveryConfig>,
}

impl RegistryClient {
    /// Build a client. Fails only if the TLS stack cannot initialise.
    pub fn new(cfg: DiscoveryConfig) -> Result<Self, DiscoverError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("imagegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DiscoverError::Http {
                url: "-".into(),
                detail: e.to_string(),
            })?;
        Ok(RegistryClient {
            http,
            cfg: Arc::new(cfg),
        })
    }

    /// A session for one image: one request budget, one auth token per registry.
    pub fn session(&self) -> Session {
        Session {
            client: self.clone(),
            used: Arc::new(AtomicUsize::new(0)),
            tokens: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn config(&self) -> &DiscoveryConfig {
        &self.cfg
    }
}

/// A fetched document.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// `sha256:<hex>` of the body.
    pub digest: String,
}

/// Requests made on behalf of one image.
#[derive(Clone)]
pub struct Session {
    client: RegistryClient,
    used: Arc<AtomicUsize>,
    /// (registry, repository, Authorization header value)
    tokens: Arc<Mutex<Vec<(String, String, String)>>>,
}

fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

impl Session {
    fn base(&self, registry: &str) -> String {
        let insecure = self
            .client
            .cfg
            .insecure_registries
            .iter()
            .any(|r| r == registry);
        format!(
            "{}://{}",
            if insecure { "http" } else { "https" },
            api_host(registry)
        )
    }

    fn spend(&self) -> Result<(), DiscoverError> {
        let limit = self.client.cfg.max_requests;
        if self.used.fetch_add(1, Ordering::SeqCst) >= limit {
            return Err(DiscoverError::RequestBudget { limit });
        }
        Ok(())
    }

    /// Requests spent so far.
    pub fn requests_used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// GET `/v2/<repo>/<path>`; `Ok(None)` on 404. Bodies over `limit` are refused. Failures
    /// are counted in the registry error metric.
    pub async fn get(
        &self,
        registry: &str,
        repo: &str,
        path: &str,
        accept: &str,
        limit: usize,
    ) -> Result<Option<Fetched>, DiscoverError> {
        let result = self
            .get_uncounted(registry, repo, path, accept, limit)
            .await;
        if let Err(error) = &result {
            crate::metrics::global().registry_error(error);
        }
        result
    }

    async fn get_uncounted(
        &self,
        registry: &str,
        repo: &str,
        path: &str,
        accept: &str,
        limit: usize,
    ) -> Result<Option<Fetched>, DiscoverError> {
        let url = format!("{}/v2/{repo}/{path}", self.base(registry));
        let mut auth = self.cached_auth(registry, repo).await;
        for attempt in 0..2 {
            self.spend()?;
            let mut req = self.client.http.get(&url).header(ACCEPT, accept);
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| transport_err(&url, e))?;
            let status = resp.status();
            debug!(%url, %status, "registry GET");
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                auth = Some(
                    self.authenticate(registry, repo, &url, resp.headers())
                        .await?,
                );
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(DiscoverError::Status {
                    url,
                    status: status.as_u16(),
                });
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
            let body = read_limited(resp, &url, limit).await?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
            return Ok(Some(Fetched {
                body,
                content_type,
                digest,
            }));
        }
        Err(DiscoverError::Auth {
            url,
            detail: "still unauthorized after authenticating".into(),
        })
    }

    /// GET content addressed by digest and check it has that digest.
    pub async fn get_by_digest(
        &self,
        registry: &str,
        repo: &str,
        kind: &str,
        digest: &str,
        accept: &str,
        limit: usize,
    ) -> Result<Option<Fetched>, DiscoverError> {
        let got = self
            .get(registry, repo, &format!("{kind}/{digest}"), accept, limit)
            .await?;
        if let Some(f) = &got {
            if f.digest != digest {
                let error = DiscoverError::DigestMismatch {
                    url: format!("{registry}/{repo}/{kind}/{digest}"),
                    expected: digest.to_string(),
                    actual: f.digest.clone(),
                };
                crate::metrics::global().registry_error(&error);
                return Err(error);
            }
        }
        Ok(got)
    }

    async fn cached_auth(&self, registry: &str, repo: &str) -> Option<String> {
        let tokens = self.tokens.lock().await;
        tokens
            .iter()
            .find(|(r, p, _)| r == registry && p == repo)
            .map(|(_, _, a)| a.clone())
    }

    async fn authenticate(
        &self,
        registry: &str,
        repo: &str,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<String, DiscoverError> {
        let auth_err = |detail: String| DiscoverError::Auth {
            url: url.to_string(),
            detail,
        };
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
            .ok_or_else(|| auth_err("401 without a usable WWW-Authenticate challenge".into()))?;
        let creds = self.client.cfg.credentials.for_host(registry).cloned();
        let header = match challenge {
            Challenge::Basic => {
                let (u, p) = creds.ok_or_else(|| {
                    auth_err("basic auth required and no credentials configured".into())
                })?;
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }
            Challenge::Bearer { realm, service, .. } => {
                if !(realm.starts_with("https://")
                    || self
                        .client
                        .cfg
                        .insecure_registries
                        .iter()
                        .any(|r| realm.starts_with(&format!("http://{r}"))))
                {
                    return Err(auth_err(format!("token realm {realm} is not HTTPS")));
                }
                self.spend()?;
                let mut q: Vec<(&str, String)> = vec![("scope", format!("repository:{repo}:pull"))];
                if let Some(s) = service {
                    q.push(("service", s));
                }
                let mut req = self.client.http.get(&realm).query(&q);
                if let Some((u, p)) = creds {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.map_err(|e| transport_err(&realm, e))?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!(
                        "token endpoint answered HTTP {}",
                        resp.status().as_u16()
                    )));
                }
                let body = read_limited(resp, &realm, 64 << 10).await?;
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body)
                    .map_err(|e| auth_err(format!("token response: {e}")))?;
                let tok = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| auth_err("token response without a token".into()))?;
                format!("Bearer {tok}")
            }
        };
        self.tokens
            .lock()
            .await
            .push((registry.to_string(), repo.to_string(), header.clone()));
        Ok(header)
    }
}

fn transport_err(url: &str, e: reqwest::Error) -> DiscoverError {
    if e.is_timeout() {
        DiscoverError::Timeout {
            url: url.to_string(),
        }
    } else {
        DiscoverError::Http {
            url: url.to_string(),
            detail: e.to_string(),
        }
    }
}

/// Read a body, refusing (early, by Content-Length, and while streaming) anything over `limit`.
async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, DiscoverError> {
    if resp.content_length().is_some_and(|l| l as usize > limit) {
        return Err(DiscoverError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_err(url, e))? {
        if body.len() + chunk.len() > limit {
            return Err(DiscoverError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
