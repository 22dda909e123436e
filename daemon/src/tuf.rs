//! The Sigstore public-good trusted root kept current through TUF.
//!
//! A policy trust entry `trusted_root = "public-good"` ([`crate::policy`]) does not name a file:
//! its `trusted_root.json` is the target of that name in Sigstore's public-good TUF repository
//! (`https://tuf-repo-cdn.sigstore.dev` by default, an operator's mirror URL, or a local
//! directory for air-gapped nodes). The TUF client work — the root chain (key rotation),
//! signature thresholds, expiry of every role, version rollback, target hashes and lengths — is
//! done by the `tough` crate with [`ExpirationEnforcement::Safe`]; this module bootstraps it with
//! the compiled-in Sigstore TUF `root.json` (`daemon/trust/sigstore-tuf/`, its README names
//! source, commit and sha256), caches its metadata and the target under `state_dir/tuf/`, and
//! hands verification the last good root while that root's metadata has not expired.
//!
//! Fail closed: a refresh that fails for any reason (unreachable, expired, rolled back, badly
//! signed, a target imagegate cannot parse) changes nothing; once the last good root's TUF
//! metadata has expired, [`PublicGood::current`] is an error and images whose authorities need
//! the root get an `error` verdict (denied in enforce mode).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tough::{ExpirationEnforcement, IntoVec as _, RepositoryLoader, TargetName};
use tracing::{info, warn};
use url::Url;

use crate::verify::{TrustMaterial, VerifyError};

/// Sigstore's public-good TUF root metadata, the client's trust anchor (see its README).
pub const SIGSTORE_TUF_ROOT_JSON: &[u8] = include_bytes!("../trust/sigstore-tuf/root.json");

/// sha256 of [`SIGSTORE_TUF_ROOT_JSON`], as its README records it.
pub const SIGSTORE_TUF_ROOT_SHA256: &str =
    "73747011d0857ada15479a16c4cae0f3ed03aac698b523b97e1de314ac9d9ca8";

/// Sigstore's public TUF repository.
pub const DEFAULT_REPOSITORY: &str = "https://tuf-repo-cdn.sigstore.dev";

/// The TUF target holding the trusted root.
pub const TARGET: &str = "trusted_root.json";

/// The policy's name for this root (`trusted_root = "public-good"`).
pub const POLICY_NAME: &str = "public-good";

/// Largest single HTTP response read (metadata or target); tough's own limits are smaller for
/// metadata, this bounds memory before they apply.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why a refresh failed or no root can be used.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error("TUF repository URL {url:?} is unusable: {reason}")]
    Url { url: String, reason: String },
    #[error("TUF update from {repository} refused")]
    Update {
        repository: String,
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error("TUF repository {repository} has no target {TARGET}")]
    MissingTarget { repository: String },
    #[error("the {TARGET} served by {repository} is unusable")]
    Unusable {
        repository: String,
        #[source]
        source: VerifyError,
    },
    #[error("TUF cache {}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no public-good trusted root: none has been fetched through TUF yet{}", last_error.as_deref().map(|e| format!(" (last refresh: {e})")).unwrap_or_default())]
    Unavailable { last_error: Option<String> },
    #[error("the public-good trusted root expired: its TUF metadata ({role}) expired at {expires} (fetched at {fetched_at}){}", last_error.as_deref().map(|e| format!("; last refresh: {e}")).unwrap_or_default())]
    Expired {
        role: String,
        expires: String,
        fetched_at: String,
        last_error: Option<String>,
    },
    #[error("no TUF client in this process, so no public-good trusted root (the daemon keeps one current; `imagegate verify`, `explain` and the in-process containerd-verifier read its cache)")]
    NotRunning,
}

/// Where the repository is and where its cache lives.
#[derive(Debug, Clone)]
pub struct TufSettings {
    /// Repository base URL (`http`, `https` or `file`): metadata at its top, targets under
    /// `targets/`.
    pub repository: String,
    /// A local copy of the repository (same layout); when set, used instead of `repository`.
    pub mirror_dir: Option<PathBuf>,
    /// Cache directory (`state_dir/tuf`).
    pub cache_dir: PathBuf,
    /// The TUF root to start from when the cache has none.
    pub bootstrap_root: Vec<u8>,
    /// Seconds per HTTP request.
    pub timeout: Duration,
}

impl TufSettings {
    /// Settings for the daemon's configuration.
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        TufSettings {
            repository: config.tuf.repository.clone(),
            mirror_dir: config.tuf.mirror_dir.clone(),
            cache_dir: config.state_dir.join("tuf"),
            bootstrap_root: SIGSTORE_TUF_ROOT_JSON.to_vec(),
            timeout: Duration::from_secs(config.registry.timeout_seconds.max(1)),
        }
    }

    /// The repository actually used, as a URL ending in `/`.
    fn base_url(&self) -> Result<Url, TufError> {
        let bad = |reason: String| TufError::Url {
            url: self.repository.clone(),
            reason,
        };
        if let Some(dir) = &self.mirror_dir {
            let dir = std::path::absolute(dir).map_err(|e| bad(e.to_string()))?;
            return Url::from_directory_path(&dir).map_err(|()| TufError::Url {
                url: dir.display().to_string(),
                reason: "not an absolute directory path".into(),
            });
        }
        let mut text = self.repository.clone();
        if !text.ends_with('/') {
            text.push('/');
        }
        let url = Url::parse(&text).map_err(|e| bad(e.to_string()))?;
        match url.scheme() {
            "http" | "https" | "file" => Ok(url),
            other => Err(bad(format!("scheme {other:?} (http, https or file)"))),
        }
    }

    /// Where the repository is, for logs and errors.
    fn describe(&self) -> String {
        match &self.mirror_dir {
            Some(dir) => format!("mirror directory {}", dir.display()),
            None => self.repository.clone(),
        }
    }
}

/// What is recorded beside the cached target (`state_dir/tuf/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootState {
    /// sha256 of the cached `trusted_root.json`, hex.
    pub sha256: String,
    /// Earliest `expires` of the root, timestamp, snapshot and targets metadata that vouched
    /// for it, unix seconds: the root is used until then.
    pub expires: i64,
    /// Which role expires first.
    pub expires_role: String,
    /// When it was fetched, unix seconds.
    pub fetched_at: i64,
    /// Versions of the metadata that vouched for it.
    pub root_version: u64,
    pub timestamp_version: u64,
    /// Where it came from.
    pub repository: String,
}

struct Current {
    material: Arc<TrustMaterial>,
    state: RootState,
}

/// The public-good trusted root: the last good one fetched through TUF, and how to refresh it.
pub struct PublicGood {
    settings: TufSettings,
    current: RwLock<Option<Arc<Current>>>,
    last_error: RwLock<Option<String>>,
    /// Whether the loaded policy names the root (the daemon refreshes only then).
    wanted: AtomicBool,
    /// Wakes the refresher to refresh (the root became wanted, or a reload asks).
    wake: tokio::sync::Notify,
    /// Tells the refresher a refresh stored another root (whose expiry it must wake for).
    fetched: tokio::sync::Notify,
    /// One refresh at a time (tough's datastore is one directory).
    refreshing: tokio::sync::Mutex<()>,
    /// Built once: a reqwest client loads the system's CA certificates when built.
    transport: Transport,
    /// The usable root's sha256 (`None`: none, or expired), for those who must re-judge when it
    /// changes ([`PublicGood::watch_root`]).
    usable: tokio::sync::watch::Sender<Option<String>>,
}

impl std::fmt::Debug for PublicGood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicGood")
            .field("repository", &self.settings.describe())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

const TARGET_FILE: &str = "trusted_root.json";
const STATE_FILE: &str = "state.json";
const METADATA_DIR: &str = "metadata";

impl PublicGood {
    /// Open the cache (no network): the last good root, if one was cached and still matches its
    /// recorded sha256, is used at once (subject to its expiry).
    #[must_use]
    pub fn open(settings: TufSettings) -> Self {
        let this = PublicGood {
            current: RwLock::new(None),
            last_error: RwLock::new(None),
            wanted: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            fetched: tokio::sync::Notify::new(),
            refreshing: tokio::sync::Mutex::new(()),
            transport: Transport::new(settings.timeout),
            settings,
            usable: tokio::sync::watch::Sender::new(None),
        };
        match this.load_cache() {
            Ok(Some(current)) => {
                info!(sha256 = %current.state.sha256, expires = current.state.expires, fetched_at = current.state.fetched_at, "cached public-good trusted root loaded");
                *write(&this.current) = Some(Arc::new(current));
            }
            Ok(None) => {}
            Err(error) => {
                warn!(error = %crate::telemetry::error_chain(&error), "cached public-good trusted root unusable; ignored");
            }
        }
        this.publish_usable();
        this
    }

    /// The sha256 of the root verification would use now; `None` when there is none (never
    /// fetched, or expired).
    pub fn usable_root(&self) -> Option<String> {
        self.usable_at(crate::verify::time::now_unix())
            .ok()
            .map(|current| current.state.sha256.clone())
    }

    /// Follows [`PublicGood::usable_root`]: changed when a refresh brings another root, and when
    /// the one in use expires. The daemon re-judges what names the root on each change.
    pub fn watch_root(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.usable.subscribe()
    }

    /// Tell the watchers if the usable root changed.
    fn publish_usable(&self) {
        let now = self.usable_root();
        self.usable.send_if_modified(|usable| {
            let changed = *usable != now;
            if changed {
                info!(sha256 = ?now, was = ?usable, "public-good trusted root in use changed");
                usable.clone_from(&now);
            }
            changed
        });
    }

    /// Refresh now (SIGHUP: an operator who reloads wants current trust material), if wanted.
    pub fn refresh_soon(&self) {
        if self.wanted.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn load_cache(&self) -> Result<Option<Current>, TufError> {
        let dir = &self.settings.cache_dir;
        let cache_err = |path: PathBuf| move |source| TufError::Cache { path, source };
        let state_path = dir.join(STATE_FILE);
        let state_text = match std::fs::read(&state_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cache_err(state_path)(e)),
        };
        let state: RootState = serde_json::from_slice(&state_text).map_err(|e| {
            cache_err(state_path.clone())(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        let target_path = dir.join(TARGET_FILE);
        let bytes = std::fs::read(&target_path).map_err(cache_err(target_path.clone()))?;
        if hex::encode(Sha256::digest(&bytes)) != state.sha256 {
            return Err(cache_err(target_path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "sha256 differs from the one recorded in state.json",
            )));
        }
        let material =
            TrustMaterial::from_trusted_root_json(&bytes).map_err(|source| TufError::Unusable {
                repository: state.repository.clone(),
                source,
            })?;
        Ok(Some(Current {
            material: Arc::new(material),
            state,
        }))
    }

    /// The root to verify with now.
    pub fn current(&self) -> Result<Arc<TrustMaterial>, TufError> {
        self.current_at(crate::verify::time::now_unix())
    }

    /// The root to verify with at `now` (unix seconds): the last good one unless its metadata
    /// has expired.
    pub fn current_at(&self, now: i64) -> Result<Arc<TrustMaterial>, TufError> {
        self.usable_at(now)
            .map(|current| Arc::clone(&current.material))
    }

    /// The last good root unless its metadata has expired at `now`, or why there is none.
    fn usable_at(&self, now: i64) -> Result<Arc<Current>, TufError> {
        let last_error = || read(&self.last_error).clone();
        let Some(current) = read(&self.current).clone() else {
            return Err(TufError::Unavailable {
                last_error: last_error(),
            });
        };
        if now >= current.state.expires {
            return Err(TufError::Expired {
                role: current.state.expires_role.clone(),
                expires: rfc3339(current.state.expires),
                fetched_at: rfc3339(current.state.fetched_at),
                last_error: last_error(),
            });
        }
        Ok(current)
    }

    /// What is recorded about the last good root.
    pub fn state(&self) -> Option<RootState> {
        read(&self.current).as_ref().map(|c| c.state.clone())
    }

    /// For `imagegate status`: the root in use (its sha256, versions, fetch and expiry times),
    /// whether it can be used now and why not, and whether the policy wants it.
    pub fn status(&self) -> serde_json::Value {
        let state = self.state();
        let usable = self.current();
        serde_json::json!({
            "repository": self.settings.describe(),
            "wanted": self.wanted.load(Ordering::SeqCst),
            "usable": usable.is_ok(),
            "error": usable.err().map(|e| e.to_string()),
            "last_refresh_error": self.last_error(),
            "sha256": state.as_ref().map(|s| s.sha256.clone()),
            "fetched_at": state.as_ref().map(|s| rfc3339(s.fetched_at)),
            "expires": state.as_ref().map(|s| rfc3339(s.expires)),
            "expires_role": state.as_ref().map(|s| s.expires_role.clone()),
            "root_version": state.as_ref().map(|s| s.root_version),
            "timestamp_version": state.as_ref().map(|s| s.timestamp_version),
        })
    }

    /// The last refresh's error, if the last refresh failed.
    pub fn last_error(&self) -> Option<String> {
        read(&self.last_error).clone()
    }

    /// Refresh from the repository: on success the new root is cached and used; on failure
    /// nothing changes (the error is also kept for [`PublicGood::current`]'s messages).
    pub async fn refresh(&self) -> Result<RootState, TufError> {
        let _one = self.refreshing.lock().await;
        let started = std::time::Instant::now();
        let result = self.refresh_inner().await;
        match &result {
            Ok(state) => {
                *write(&self.last_error) = None;
                info!(sha256 = %state.sha256, root_version = state.root_version, timestamp_version = state.timestamp_version, expires = %rfc3339(state.expires), elapsed_ms = started.elapsed().as_millis() as u64, repository = %state.repository, "public-good trusted root refreshed through TUF");
            }
            Err(error) => {
                let text = crate::telemetry::error_chain(error);
                warn!(error = %text, repository = %self.settings.describe(), "public-good trusted root refresh failed; keeping the last good one");
                *write(&self.last_error) = Some(text);
            }
        }
        self.publish_usable();
        result
    }

    async fn refresh_inner(&self) -> Result<RootState, TufError> {
        let base = self.settings.base_url()?;
        let repository = self.settings.describe();
        let targets = base.join("targets/").map_err(|e| TufError::Url {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        let dir = &self.settings.cache_dir;
        let metadata_dir = dir.join(METADATA_DIR);
        create_private_dir(&metadata_dir)?;
        // Continue from the newest root verified before (tough keeps it in its datastore), so
        // a rotation survives restarts; the built-in root only when none is cached or it no
        // longer verifies as a root.
        let anchor = match std::fs::read(metadata_dir.join("root.json")) {
            Ok(bytes) if self_signed_root(&bytes) => bytes,
            _ => self.settings.bootstrap_root.clone(),
        };
        let transport = self.transport.clone();
        let update = |source| TufError::Update {
            repository: repository.clone(),
            source: Box::new(source),
        };
        let repo = RepositoryLoader::new(&anchor, base.clone(), targets)
            .transport(transport)
            .datastore(&metadata_dir)
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(update)?;
        let name = TargetName::new(TARGET).map_err(update)?;
        let stream = repo
            .read_target(&name)
            .await
            .map_err(update)?
            .ok_or_else(|| TufError::MissingTarget {
                repository: repository.clone(),
            })?;
        let bytes = stream.into_vec().await.map_err(update)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        // The same target as the one in use (the usual refresh): only its expiry moves.
        let unchanged = read(&self.current)
            .as_ref()
            .filter(|c| c.state.sha256 == sha256)
            .map(|c| Arc::clone(&c.material));
        let material =
            match unchanged.clone() {
                Some(material) => material,
                None => Arc::new(TrustMaterial::from_trusted_root_json(&bytes).map_err(
                    |source| TufError::Unusable {
                        repository: repository.clone(),
                        source,
                    },
                )?),
            };
        let (expires, expires_role) = [
            (repo.root().signed.expires, "root"),
            (repo.timestamp().signed.expires, "timestamp"),
            (repo.snapshot().signed.expires, "snapshot"),
            (repo.targets().signed.expires, "targets"),
        ]
        .into_iter()
        .min_by_key(|(expires, _)| *expires)
        .unwrap_or((repo.timestamp().signed.expires, "timestamp"));
        let state = RootState {
            sha256,
            expires: expires.as_second(),
            expires_role: expires_role.to_owned(),
            fetched_at: crate::verify::time::now_unix(),
            root_version: repo.root().signed.version.get(),
            timestamp_version: repo.timestamp().signed.version.get(),
            repository,
        };
        // The target first, then the state naming its sha256: a crash between the two leaves
        // a mismatch that the next start ignores.
        if unchanged.is_none() {
            write_atomic(&dir.join(TARGET_FILE), &bytes)?;
        }
        let state_json = serde_json::to_vec_pretty(&state).unwrap_or_default();
        write_atomic(&dir.join(STATE_FILE), &state_json)?;
        *write(&self.current) = Some(Arc::new(Current {
            material,
            state: state.clone(),
        }));
        self.fetched.notify_one();
        Ok(state)
    }

    /// Tell whether the loaded policy names the public-good root; the refresher fetches only
    /// while one does, and at once when one starts to.
    pub fn set_wanted(&self, wanted: bool) {
        let was = self.wanted.swap(wanted, Ordering::SeqCst);
        if wanted && !was {
            self.wake.notify_one();
        }
    }

    /// Refresh now and then every `interval` while wanted (a failed refresh is retried after a
    /// minute at most). Between refreshes it wakes when the root in use expires, to tell the
    /// watchers. Runs until the task is dropped.
    pub async fn refresh_loop(self: Arc<Self>, interval: Duration) {
        loop {
            let refreshed = !self.wanted.load(Ordering::SeqCst) || self.refresh().await.is_ok();
            let next = tokio::time::Instant::now()
                + if refreshed {
                    interval
                } else {
                    interval.min(Duration::from_secs(60))
                };
            loop {
                let until = self.expiry_instant().map_or(next, |at| at.min(next));
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = self.wake.notified() => break,
                    // Another caller fetched a root: its expiry is the one to wake for.
                    () = self.fetched.notified() => {}
                }
                self.publish_usable();
                if tokio::time::Instant::now() >= next {
                    break;
                }
            }
        }
    }

    /// When the root in use stops being usable (a second past its expiry), if it still is.
    fn expiry_instant(&self) -> Option<tokio::time::Instant> {
        let expires = self.state()?.expires;
        let left = u64::try_from(expires - crate::verify::time::now_unix()).ok()?;
        Some(tokio::time::Instant::now() + Duration::from_secs(left + 1))
    }
}

/// Whether `bytes` parse as TUF root metadata signed by a threshold of its own root keys.
fn self_signed_root(bytes: &[u8]) -> bool {
    serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(bytes)
        .ok()
        .is_some_and(|root| root.signed.verify_role(&root).is_ok())
}

fn create_private_dir(path: &Path) -> Result<(), TufError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| TufError::Cache {
            path: path.to_path_buf(),
            source,
        })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TufError> {
    let err = |source| TufError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn rfc3339(unix: i64) -> String {
    crate::verify::time::format_rfc3339(unix)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// tough's transport: `file` URLs through tough's own, `http(s)` through reqwest set up as the
/// registry client is (rustls with the system's CAs, at most 3 redirects, the environment's
/// proxy settings). What it fetches is only trusted once tough has verified it.
#[derive(Debug, Clone)]
struct Transport {
    http: Option<reqwest::Client>,
}

impl Transport {
    fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("imagegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| warn!(error = %e, "no HTTP client for TUF; only file URLs work"))
            .ok();
        Transport { http }
    }
}

#[async_trait::async_trait]
impl tough::Transport for Transport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, tough::TransportError> {
        use tough::{TransportError, TransportErrorKind};
        match url.scheme() {
            "file" => tough::FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                let Some(http) = &self.http else {
                    return Err(TransportError::new(TransportErrorKind::Other, url.as_str()));
                };
                let other = |e: reqwest::Error| {
                    TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e)
                };
                let mut response = http.get(url.clone()).send().await.map_err(other)?;
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    return Err(TransportError::new(
                        TransportErrorKind::FileNotFound,
                        url.as_str(),
                    ));
                }
                response = response.error_for_status().map_err(other)?;
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(other)? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_RESPONSE_BYTES {
                        return Err(TransportError::new_with_cause(
                            TransportErrorKind::Other,
                            url.as_str(),
                            format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
                        ));
                    }
                }
                Ok(Box::pin(futures::stream::iter([Ok(tough::Bytes::from(
                    body,
                ))])))
            }
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url.as_str(),
            )),
        }
    }
}

/// The daemon's client, for verification to find ([`resolve`]).
static INSTALLED: RwLock<Option<Arc<PublicGood>>> = RwLock::new(None);

/// Make `client` the one [`resolve`] uses (the daemon does at start).
pub fn install(client: Arc<PublicGood>) {
    *write(&INSTALLED) = Some(client);
}

/// The installed client, if any.
pub fn installed() -> Option<Arc<PublicGood>> {
    read(&INSTALLED).clone()
}

/// The trust material for an authority: its own, or — when it names the public-good root — the
/// installed client's current root (with the authority's own witnesses, if it names any), or the
/// error saying why there is none.
pub fn resolve(trust: &Arc<TrustMaterial>) -> Result<Arc<TrustMaterial>, TufError> {
    if !trust.public_good {
        return Ok(Arc::clone(trust));
    }
    let root = installed().ok_or(TufError::NotRunning)?.current()?;
    Ok(with_witnesses_of(root, trust))
}

/// `root` with the witnesses the authority's own trust entry requires (a policy may name
/// witnesses beside the public-good root; the root itself names none).
fn with_witnesses_of(root: Arc<TrustMaterial>, trust: &TrustMaterial) -> Arc<TrustMaterial> {
    if trust.witnesses.is_empty() {
        return root;
    }
    Arc::new(TrustMaterial {
        witnesses: trust.witnesses.clone(),
        ..(*root).clone()
    })
}

/// For an offline command (`imagegate verify`, `explain`, the in-process `containerd-verifier`)
/// whose `policy` names the public-good root: the root the daemon keeps under `config`'s
/// state_dir, read only (no refresh, no network), installed for verification to find. With no
/// usable cached root, verification needing it is an `error`, saying why.
pub fn install_cached(config: &crate::config::Config, policy: &crate::policy::Policy) {
    if !policy.uses_public_good() {
        return;
    }
    let client = Arc::new(PublicGood::open(TufSettings::from_config(config)));
    info!(
        cached = client.usable_root().unwrap_or_else(|| "none usable".into()),
        cache = %client.settings.cache_dir.display(),
        "public-good trusted root: the daemon's cache, read only"
    );
    install(client);
}

/// Open the cache, install the client and start its refresher on the current tokio runtime.
/// The refresher fetches only while `wanted` (the policy names the root; see
/// [`PublicGood::set_wanted`]).
pub fn start(config: &crate::config::Config, wanted: bool) -> Arc<PublicGood> {
    let client = Arc::new(PublicGood::open(TufSettings::from_config(config)));
    client.set_wanted(wanted);
    info!(
        repository = %client.settings.describe(),
        wanted,
        cached = client.state().map(|s| format!("{} expires {}", s.sha256, rfc3339(s.expires))).unwrap_or_else(|| "none".into()),
        "public-good trusted root: TUF client started (refreshes only while the policy names it)"
    );
    install(Arc::clone(&client));
    let interval = Duration::from_secs(config.tuf.refresh_interval_seconds.max(60));
    tokio::spawn(Arc::clone(&client).refresh_loop(interval));
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy's witnesses beside `public-good` join the root the TUF client serves; an
    /// authority without witnesses gets the root itself (no copy).
    #[test]
    fn a_public_good_authority_keeps_its_witnesses() {
        use crate::verify::witness::{testing::TestWitness, Witness, Witnesses};
        let root = Arc::new(
            crate::verify::public_good::trust_material().expect("the built-in public-good root"),
        );
        let plain = TrustMaterial {
            public_good: true,
            ..TrustMaterial::default()
        };
        assert!(Arc::ptr_eq(
            &with_witnesses_of(Arc::clone(&root), &plain),
            &root
        ));
        let witness =
            Witness::from_vkey(&TestWitness::new("w.example/1", 1).vkey(4)).expect("vkey");
        let witnessed = TrustMaterial {
            witnesses: Witnesses::new(vec![witness], None).expect("one witness"),
            ..plain
        };
        let resolved = with_witnesses_of(Arc::clone(&root), &witnessed);
        assert_eq!(resolved.witnesses.keys[0].name, "w.example/1");
        assert_eq!(resolved.tlogs.len(), root.tlogs.len());
        assert_eq!(resolved.cas.len(), root.cas.len());
        assert!(root.witnesses.is_empty());
    }

    #[test]
    fn the_built_in_tuf_root_is_the_recorded_file_and_verifies_as_a_root() {
        assert_eq!(
            hex::encode(Sha256::digest(SIGSTORE_TUF_ROOT_JSON)),
            SIGSTORE_TUF_ROOT_SHA256
        );
        let root: tough::schema::Signed<tough::schema::Root> =
            serde_json::from_slice(SIGSTORE_TUF_ROOT_JSON).expect("parses as TUF root metadata");
        root.signed
            .verify_role(&root)
            .expect("signed by a threshold of its own root keys");
        assert!(root.signed.consistent_snapshot);
        assert!(self_signed_root(SIGSTORE_TUF_ROOT_JSON));
        // One signature removed below the threshold of 3 must not verify.
        let mut weak = root.clone();
        weak.signatures.truncate(2);
        assert!(weak.signed.verify_role(&weak).is_err());
    }

    #[test]
    fn no_root_fetched_or_an_expired_one_is_an_error_naming_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = PublicGood::open(TufSettings {
            repository: "http://127.0.0.1:9/".into(),
            mirror_dir: None,
            cache_dir: dir.path().join("tuf"),
            bootstrap_root: SIGSTORE_TUF_ROOT_JSON.to_vec(),
            timeout: Duration::from_secs(1),
        });
        let error = client.current().expect_err("nothing fetched");
        assert!(matches!(error, TufError::Unavailable { .. }), "{error}");
        // A cached root whose metadata expired: kept on disk, refused for verification.
        let root = crate::verify::public_good::TRUSTED_ROOT_JSON;
        std::fs::create_dir_all(dir.path().join("tuf")).expect("mkdir");
        std::fs::write(dir.path().join("tuf/trusted_root.json"), root).expect("write");
        let state = RootState {
            sha256: hex::encode(Sha256::digest(root)),
            expires: 2_000,
            expires_role: "timestamp".into(),
            fetched_at: 1_000,
            root_version: 1,
            timestamp_version: 1,
            repository: "test".into(),
        };
        std::fs::write(
            dir.path().join("tuf/state.json"),
            serde_json::to_vec(&state).expect("json"),
        )
        .expect("write");
        let client = PublicGood::open(client.settings.clone());
        assert_eq!(client.state(), Some(state));
        assert!(client.current_at(1_999).is_ok());
        let error = client.current_at(2_000).expect_err("expired");
        assert!(
            error
                .to_string()
                .contains("expired at 1970-01-01T00:33:20Z"),
            "{error}"
        );
        // A cached target that no longer matches its recorded sha256 is ignored.
        std::fs::write(dir.path().join("tuf/trusted_root.json"), b"{}").expect("write");
        let client = PublicGood::open(client.settings.clone());
        assert!(client.state().is_none());
    }
}
