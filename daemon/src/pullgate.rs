//! Refusing untrusted pulls where containerd asks: containerd 2.x's image verifier hook
//! (`io.containerd.image-verifier.v1.bindir`) runs every executable in its `bin_dir` before a
//! transfer-service pull fetches anything, as
//! `BIN -name REF -digest DIGEST -stdin-media-type application/vnd.oci.descriptor.v1+json`
//! with the image's OCI descriptor (the index's, for a multi-arch image) on stdin, no
//! credentials, within `per_verifier_timeout` (10 s by default). Exit 0 admits; anything else
//! refuses, and what the verifier printed on stdout becomes the reason in the pull's error
//! (`image verifier bindir blocked pull of REF with digest D for reason: verifier imagegate
//! rejected image (exit code 1): ...`), which `ctr` prints and kubelet shows as ErrImagePull.
//!
//! `imagegate containerd-verifier` (or the `imagegate` binary itself, called by containerd with
//! `-name` first) is that executable. It returns the daemon's verdict: it asks the running
//! daemon over its root-only socket (`verify_socket`), which judges with the daemon's own
//! policy, registry client and verdict cache ([`judge`], the code path that judges image
//! records); when no daemon listens there, it judges in process with the daemon's configuration
//! and policy (no cache). A multi-arch image is judged as the daemon will judge its record: the
//! platform manifest this node unpacks, chosen from the index by the catalog's rule, verified
//! with the index. What the daemon would deny is never admitted: no verdict in time, an
//! unreadable configuration or a malformed request all refuse, except where the daemon would
//! allow anyway (its `mode = "audit"`, or a scope in audit mode), where the pull is admitted
//! and the verdict reported. The kernel enforcement stays the guarantee: pulls that do not go
//! through the hook (`ctr images pull --local`, CRI's `use_local_image_pull`, containerd 1.x)
//! are judged by the daemon once they land, as always.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    discover::RegistryClient,
    enforce::Mode as DaemonMode,
    oci,
    policy::{Mode, Policy, Requirement},
    verdict::{Verdict, VerdictCache},
    verify::{FailureKind, ImageRef},
};

/// The media type containerd gives with `-stdin-media-type`: an OCI descriptor.
pub const DESCRIPTOR_MEDIA_TYPE: &str = "application/vnd.oci.descriptor.v1+json";

/// How long the verifier takes at most by default, below containerd's default
/// `per_verifier_timeout` (10 s): past containerd's limit the pull fails without our reason.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(8);

/// Largest request (or descriptor on stdin) read.
const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// Largest answer read from the daemon (a verdict with its reasons).
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// How long the daemon waits for a client's request line.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pull judgements running at once in the daemon (each may ask a registry).
pub const CONCURRENCY: usize = 16;

/// What the verifier asks the daemon: the pull containerd is about to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The reference as containerd resolved it (`-name`).
    pub name: String,
    /// The digest it resolved to (`-digest`): a manifest's, or an index's.
    pub digest: String,
    /// The descriptor's media type (empty when containerd gave none).
    pub media_type: String,
    /// How long the daemon may take (the verifier's remaining budget less a margin).
    pub deadline_ms: u64,
}

/// The answer: admit or refuse, and the verdict behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the pull may go on: the verdict allows it (trusted, or a scope in audit mode),
    /// or the daemon is in audit mode as a whole.
    pub admit: bool,
    /// The verdict (its `digest` is the platform manifest judged).
    pub verdict: Verdict,
    /// The index the platform manifest was chosen from, for a multi-arch image.
    pub index_digest: Option<String>,
    /// The daemon's own mode (`mode` in its configuration).
    pub daemon_mode: DaemonMode,
    /// `daemon` or `in-process`.
    pub answered_by: String,
}

impl Answer {
    /// One line for containerd's error message (and kubelet's event): the decision, the image,
    /// the scope and mode, and why.
    #[must_use]
    pub fn message(&self) -> String {
        let v = &self.verdict;
        let outcome = match v.outcome {
            crate::verdict::Outcome::Trusted => "TRUSTED",
            crate::verdict::Outcome::Untrusted => "UNTRUSTED",
            crate::verdict::Outcome::Error => "ERROR",
        };
        let decision = match (self.admit, v.allows()) {
            (false, _) => "imagegate refused the pull",
            (true, true) if v.outcome == crate::verdict::Outcome::Trusted => {
                "imagegate admitted the pull"
            }
            (true, true) => "imagegate admitted the pull (scope in audit mode: reported)",
            (true, false) => "imagegate admitted the pull (daemon in audit mode: reported)",
        };
        let platform = self
            .index_digest
            .as_ref()
            .map_or_else(String::new, |index| {
                format!(" (platform manifest {} of index {index})", v.digest)
            });
        let mode = match v.mode {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        };
        let mut line = format!(
            "{decision}: {outcome} {}{platform} under scope {:?} ({mode})",
            v.image, v.scope
        );
        let reasons: Vec<String> = v
            .reasons
            .iter()
            .filter(|r| r.accepted == (v.outcome == crate::verdict::Outcome::Trusted))
            .take(4)
            .map(|r| {
                let authority = r
                    .authority
                    .as_deref()
                    .map_or_else(String::new, |a| format!(" ({a})"));
                format!("{}{authority}: {}", r.signature, r.detail)
            })
            .collect();
        if !reasons.is_empty() {
            line.push_str(": ");
            line.push_str(&reasons.join("; "));
        }
        // One line: containerd puts it into an error message.
        let mut line = line.replace(['\n', '\r'], " ");
        if line.len() > 2000 {
            let mut cut = 2000;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("...");
        }
        line
    }
}

/// What judges a pull: the daemon's policy, registry client and (in the daemon) verdict cache.
#[derive(Clone)]
pub struct Judge {
    pub policy: Arc<Policy>,
    pub client: Arc<RegistryClient>,
    pub cache: Option<Arc<VerdictCache>>,
    /// The daemon's `mode`.
    pub mode: DaemonMode,
    /// Who answers (`daemon` or `in-process`), for the answer.
    pub answered_by: &'static str,
    /// Platform manifests chosen from indexes seen (an index digest names fixed content).
    pub platforms: Arc<PlatformChoices>,
}

/// Index digest → the platform manifest chosen from it, bounded.
#[derive(Default)]
pub struct PlatformChoices(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl PlatformChoices {
    const MAX: usize = 4096;

    fn get(&self, index: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(index)
            .cloned()
    }

    fn put(&self, index: &str, manifest: &str) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(index.to_owned(), manifest.to_owned());
    }
}

/// Whether `media_type` names a single-platform manifest (no index to resolve).
fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
    )
}

impl Judge {
    /// The verdict for a pull of `request.name` at `request.digest`, as the daemon will judge
    /// the image record the pull creates: the same function ([`crate::discover::verify_digest`]),
    /// the same platform manifest, the same cache key.
    pub async fn judge(&self, request: &Request) -> Answer {
        let verdict = self.verdict(request).await;
        self.answer(verdict.0, verdict.1)
    }

    fn answer(&self, verdict: Verdict, index_digest: Option<String>) -> Answer {
        Answer {
            admit: self.mode == DaemonMode::Audit || verdict.allows(),
            verdict,
            index_digest,
            daemon_mode: self.mode,
            answered_by: self.answered_by.to_owned(),
        }
    }

    async fn verdict(&self, request: &Request) -> (Verdict, Option<String>) {
        let policy = &self.policy;
        let Ok(image) = ImageRef::parse(&request.name) else {
            // A name the policy cannot match: the default rule, through verify_image's error
            // path, as the daemon judges such a record (never trusted).
            return (
                crate::discover::verify_image(
                    &self.client,
                    policy,
                    None,
                    &request.name,
                    &oci::host_platform(),
                )
                .await,
                None,
            );
        };
        let cache = self.cache.as_deref();
        // What is verified: the descriptor's digest itself, or for an index (or a descriptor
        // without a media type) under a signature rule, the platform manifest this node will
        // unpack, chosen as the catalog chooses it, with the index's digest beside it.
        let platform_manifest = if !matches!(
            policy.rule_for(&image).requirement,
            Requirement::Signatures { .. }
        ) || is_manifest(&request.media_type)
        {
            None
        } else if let Some(manifest) = self.platforms.get(&request.digest) {
            Some(manifest)
        } else {
            match self.platform_manifest(&image, &request.digest).await {
                Ok(manifest) => {
                    if let Some(manifest) = &manifest {
                        self.platforms.put(&request.digest, manifest);
                    }
                    manifest
                }
                Err(detail) => {
                    let rule = policy.rule_for(&image);
                    return (
                        Verdict::error(
                            &image.to_string(),
                            &request.digest,
                            &rule.scope,
                            rule.mode,
                            &policy.hash,
                            Some(FailureKind::Artifact),
                            detail,
                        ),
                        None,
                    );
                }
            }
        };
        let (digest, index) = match platform_manifest {
            Some(manifest) => (manifest, Some(request.digest.clone())),
            None => (request.digest.clone(), None),
        };
        let verdict = crate::discover::verify_digest(
            &self.client,
            policy,
            cache,
            &image,
            &digest,
            index.as_deref(),
        )
        .await;
        (verdict, index)
    }

    /// The platform manifest chosen from the index `digest` (fetched by digest from the image's
    /// repository); `None` when `digest` is a manifest after all.
    async fn platform_manifest(
        &self,
        image: &ImageRef,
        digest: &str,
    ) -> Result<Option<String>, String> {
        let session = self.client.session();
        let fetched = session
            .get_by_digest(
                &image.registry,
                &image.repository,
                "manifests",
                digest,
                crate::discover::client::MANIFEST_ACCEPT,
                self.client.config().max_manifest_bytes,
            )
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{}: {digest} not found", image.name()))?;
        match oci::parse_document(digest, "", &fetched.body).map_err(|e| e.to_string())? {
            oci::Document::Manifest(_) => Ok(None),
            oci::Document::Index(index) => {
                oci::select_platform(digest, &index, &oci::host_platform())
                    .map(|chosen| Some(chosen.digest().to_string()))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The answer when no verdict came in time: refused, unless the daemon would allow the
    /// image whatever its verdict (its own audit mode, or the image's scope in audit mode).
    #[must_use]
    pub fn unanswered(&self, request: &Request, detail: &str) -> Answer {
        unanswered(&self.policy, self.mode, request, detail, self.answered_by)
    }
}

/// An `error` verdict for `request` under `policy` (no verdict reached: `detail` says why),
/// admitted only where the daemon allows whatever the verdict.
#[must_use]
pub fn unanswered(
    policy: &Policy,
    mode: DaemonMode,
    request: &Request,
    detail: &str,
    answered_by: &str,
) -> Answer {
    let rule =
        ImageRef::parse(&request.name).map_or(&policy.default, |image| policy.rule_for(&image));
    let verdict = Verdict::error(
        &request.name,
        &request.digest,
        &rule.scope,
        rule.mode,
        &policy.hash,
        Some(FailureKind::Artifact),
        detail.to_owned(),
    );
    Answer {
        admit: mode == DaemonMode::Audit || verdict.allows(),
        verdict,
        index_digest: None,
        daemon_mode: mode,
        answered_by: answered_by.to_owned(),
    }
}

/// Serves one connection on the daemon's verify socket: one request line, one answer line.
/// Only a peer with the daemon's own user id (root) is answered.
pub async fn serve_connection(stream: tokio::net::UnixStream, judge: Judge) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let me = nix::unistd::Uid::effective().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => {}
        other => {
            tracing::warn!(peer = ?other.map(|c| c.uid()), "verify socket: a peer of another user was refused");
            return;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES));
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_line(&mut line)).await;
    let Ok(Ok(_)) = read else {
        return;
    };
    let Ok(request) = serde_json::from_str::<Request>(&line) else {
        tracing::warn!("verify socket: a malformed request was refused");
        return;
    };
    let started = Instant::now();
    let deadline = Duration::from_millis(request.deadline_ms.clamp(100, 60_000));
    let answer = match tokio::time::timeout(deadline, judge.judge(&request)).await {
        Ok(answer) => answer,
        Err(_) => judge.unanswered(
            &request,
            &format!(
                "no verdict within {} ms (the registry is slow or unreachable)",
                deadline.as_millis()
            ),
        ),
    };
    log_answer(&request, &answer, started.elapsed());
    let mut body = serde_json::to_vec(&answer).unwrap_or_default();
    body.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(5), write.write_all(&body)).await;
}

fn log_answer(request: &Request, answer: &Answer, elapsed: Duration) {
    let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if answer.admit && answer.verdict.outcome == crate::verdict::Outcome::Trusted {
        tracing::info!(image = %request.name, digest = %request.digest, judged = %answer.verdict.digest, millis, "pull admitted");
    } else if answer.admit {
        tracing::warn!(image = %request.name, digest = %request.digest, judged = %answer.verdict.digest, outcome = ?answer.verdict.outcome, millis, reason = %answer.message(), "pull admitted in audit mode");
    } else {
        tracing::warn!(image = %request.name, digest = %request.digest, judged = %answer.verdict.digest, outcome = ?answer.verdict.outcome, millis, reason = %answer.message(), "pull refused");
    }
}

/// The verifier's arguments: containerd's (`-name`, `-digest`, `-stdin-media-type`, Go flag
/// syntax: one or two dashes, `-flag value` or `-flag=value`) and imagegate's own
/// (`--config FILE`, `--timeout-seconds N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierArgs {
    pub name: String,
    pub digest: String,
    pub stdin_media_type: String,
    /// The daemon's configuration (`--config`, else `IMAGEGATE_CONFIG`, else the default).
    pub config: PathBuf,
    pub budget: Duration,
}

impl VerifierArgs {
    /// Parses the arguments after the program (or subcommand) name.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut name = None;
        let mut digest = None;
        let mut media_type = None;
        let mut config = std::env::var_os("IMAGEGATE_CONFIG")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from);
        let mut budget = DEFAULT_BUDGET;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let flag = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            let (flag, value) = match flag.split_once('=') {
                Some((flag, value)) => (flag, value.to_owned()),
                None => (
                    flag,
                    rest.next()
                        .ok_or_else(|| format!("-{flag} needs a value"))?
                        .clone(),
                ),
            };
            match flag {
                "name" => name = Some(value),
                "digest" => digest = Some(value),
                "stdin-media-type" => media_type = Some(value),
                "config" => config = Some(PathBuf::from(value)),
                "timeout-seconds" => {
                    let seconds: f64 = value
                        .parse()
                        .map_err(|_| format!("-timeout-seconds {value:?} is not a number"))?;
                    if !(0.1..=600.0).contains(&seconds) {
                        return Err(format!("-timeout-seconds {value} is out of range"));
                    }
                    budget = Duration::from_secs_f64(seconds);
                }
                other => return Err(format!("unknown flag -{other}")),
            }
        }
        Ok(Self {
            name: name.ok_or("-name is missing")?,
            digest: digest.ok_or("-digest is missing")?,
            stdin_media_type: media_type.unwrap_or_default(),
            config: config.unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH)),
            budget,
        })
    }
}

/// Whether `args` (after the program name) are containerd's verifier call: `-name` first.
#[must_use]
pub fn is_containerd_call(args: &[String]) -> bool {
    args.first()
        .is_some_and(|first| first == "-name" || first.starts_with("-name=") || first == "--name")
}

/// The descriptor containerd writes on stdin: its media type, checked against `-digest`.
fn read_descriptor(input: &mut dyn std::io::Read, args: &VerifierArgs) -> Result<String, String> {
    if !args.stdin_media_type.is_empty() && args.stdin_media_type != DESCRIPTOR_MEDIA_TYPE {
        return Err(format!(
            "stdin media type {:?} is not {DESCRIPTOR_MEDIA_TYPE}",
            args.stdin_media_type
        ));
    }
    let mut bytes = Vec::new();
    input
        .take(MAX_REQUEST_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the descriptor on stdin: {e}"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // No descriptor (called by hand): the media type is worked out from the registry.
        return Ok(String::new());
    }
    #[derive(Deserialize)]
    struct Descriptor {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        digest: String,
    }
    let descriptor: Descriptor = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the descriptor on stdin is malformed: {e}"))?;
    if descriptor.digest != args.digest {
        return Err(format!(
            "the descriptor's digest {} is not -digest {}",
            descriptor.digest, args.digest
        ));
    }
    Ok(descriptor.media_type)
}

/// `imagegate containerd-verifier`: prints the decision on stdout (one line, which containerd
/// puts into its error) and the verdict on stderr (containerd's debug log); returns the exit
/// code (0 admits).
pub fn run_verifier(args: &[String]) -> i32 {
    let started = Instant::now();
    let refuse = |why: &str| {
        println!("imagegate refused the pull: {why}");
        1
    };
    let args = match VerifierArgs::parse(args) {
        Ok(args) => args,
        Err(error) => return refuse(&format!("bad arguments: {error}")),
    };
    let media_type = match read_descriptor(&mut std::io::stdin().lock(), &args) {
        Ok(media_type) => media_type,
        Err(error) => return refuse(&error),
    };
    let config = match crate::config::Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => return refuse(&format!("cannot load the configuration: {error}")),
    };
    let mut request = Request {
        name: args.name.clone(),
        digest: args.digest.clone(),
        media_type,
        deadline_ms: 0,
    };
    let remaining = |margin: Duration| args.budget.saturating_sub(started.elapsed() + margin);
    let answer = match ask_daemon(
        &config.verify_socket,
        &mut request,
        remaining(Duration::from_millis(300)),
    ) {
        Asked::Answer(answer) => *answer,
        Asked::NoDaemon => {
            match in_process(&config, &request, remaining(Duration::from_millis(100))) {
                Ok(answer) => answer,
                Err(error) => return refuse(&error),
            }
        }
        Asked::NoAnswer(detail) => {
            // The daemon took the request and gave no verdict: refused unless it would allow
            // whatever the verdict (audit), which the policy alone tells.
            match crate::policy::Policy::load(&config.policy) {
                Ok(policy) => unanswered(&policy, config.mode, &request, &detail, "daemon"),
                Err(error) => {
                    return refuse(&format!("{detail}; and the policy does not load: {error}"))
                }
            }
        }
    };
    println!("{}", answer.message());
    eprint!("{}", answer.verdict);
    eprintln!(
        "answered by the {} in {} ms",
        answer.answered_by,
        started.elapsed().as_millis()
    );
    let _ = std::io::stdout().flush();
    i32::from(!answer.admit)
}

enum Asked {
    Answer(Box<Answer>),
    /// Nothing listens on the socket: verify in process.
    NoDaemon,
    /// The daemon took the request and did not answer in time (or answered garbage).
    NoAnswer(String),
}

fn ask_daemon(socket: &Path, request: &mut Request, budget: Duration) -> Asked {
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(_) => return Asked::NoDaemon,
    };
    request.deadline_ms = u64::try_from(
        budget
            .saturating_sub(Duration::from_millis(200))
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    let exchange = || -> std::io::Result<Answer> {
        let timeout = Some(budget.max(Duration::from_millis(10)));
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        (&stream).write_all(&line)?;
        let mut answer = String::new();
        std::io::BufReader::new((&stream).take(MAX_ANSWER_BYTES)).read_line(&mut answer)?;
        if answer.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            ));
        }
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    };
    match exchange() {
        Ok(answer) => Asked::Answer(Box::new(answer)),
        Err(error) => Asked::NoAnswer(format!(
            "the daemon at {} gave no verdict within {} ms: {error}",
            socket.display(),
            budget.as_millis()
        )),
    }
}

/// Judges in this process with the daemon's configuration and policy (no verdict cache).
fn in_process(
    config: &crate::config::Config,
    request: &Request,
    budget: Duration,
) -> Result<Answer, String> {
    let policy = crate::policy::Policy::load(&config.policy).map_err(|e| {
        format!(
            "the policy does not load: {}",
            crate::telemetry::error_chain(&e)
        )
    })?;
    crate::tuf::install_cached(config, &policy);
    let client = registry_client(config)?;
    let judge = Judge {
        policy: Arc::new(policy),
        client: Arc::new(client),
        cache: None,
        mode: config.mode,
        answered_by: "in-process verifier (no daemon listening)",
        platforms: Arc::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    Ok(runtime.block_on(async {
        match tokio::time::timeout(budget, judge.judge(request)).await {
            Ok(answer) => answer,
            Err(_) => judge.unanswered(
                request,
                &format!("no verdict within {} ms", budget.as_millis()),
            ),
        }
    }))
}

/// The registry client the daemon builds from its configuration.
pub fn registry_client(config: &crate::config::Config) -> Result<RegistryClient, String> {
    let credentials = match &config.registry.docker_config {
        Some(path) => crate::discover::Credentials::from_docker_config(path)
            .map_err(|e| format!("reading credentials from {}: {e}", path.display()))?,
        None => crate::discover::Credentials::default(),
    };
    RegistryClient::new(crate::discover::DiscoveryConfig {
        credentials,
        insecure_registries: config.registry.insecure.clone(),
        request_timeout: Duration::from_secs(config.registry.timeout_seconds),
        ..crate::discover::DiscoveryConfig::default()
    })
    .map_err(|e| format!("setting up the registry client: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|&s| s.to_owned()).collect()
    }

    #[test]
    fn containerds_arguments_parse_in_go_flag_syntax() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let call = strings(&[
            "-name",
            "r.test/app:1",
            "-digest",
            &digest,
            "-stdin-media-type",
            DESCRIPTOR_MEDIA_TYPE,
        ]);
        assert!(is_containerd_call(&call));
        let args = VerifierArgs::parse(&call).unwrap();
        assert_eq!(args.name, "r.test/app:1");
        assert_eq!(args.digest, digest);
        assert_eq!(args.stdin_media_type, DESCRIPTOR_MEDIA_TYPE);
        assert_eq!(args.budget, DEFAULT_BUDGET);
        let other = VerifierArgs::parse(&strings(&[
            "--config=/x.toml",
            "--name=r.test/app:1",
            "-digest",
            &digest,
            "-timeout-seconds",
            "2.5",
        ]))
        .unwrap();
        assert_eq!(other.config, PathBuf::from("/x.toml"));
        assert_eq!(other.budget, Duration::from_millis(2500));
        assert!(!is_containerd_call(&strings(&["verify", "x"])));
        assert!(VerifierArgs::parse(&strings(&["-name", "x"])).is_err());
        assert!(VerifierArgs::parse(&strings(&["-name"])).is_err());
        assert!(
            VerifierArgs::parse(&strings(&["-bogus", "1", "-name", "x", "-digest", "d"])).is_err()
        );
    }

    #[test]
    fn the_descriptor_must_name_the_digest_containerd_gave() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let args =
            VerifierArgs::parse(&strings(&["-name", "r.test/a:1", "-digest", &digest])).unwrap();
        let good = format!(
            "{{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"digest\":\"{digest}\",\"size\":3}}\n"
        );
        assert_eq!(
            read_descriptor(&mut good.as_bytes(), &args).unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        let other = good.replace(&digest, &format!("sha256:{}", "c".repeat(64)));
        assert!(read_descriptor(&mut other.as_bytes(), &args).is_err());
        assert!(read_descriptor(&mut "{".as_bytes(), &args).is_err());
        assert_eq!(read_descriptor(&mut "".as_bytes(), &args).unwrap(), "");
    }
}

/// containerd's default verifier directory (`io.containerd.image-verifier.v1.bindir`).
pub const CONTAINERD_DEFAULT_BIN_DIR: &str = "/opt/containerd/image-verifier/bin";
/// The verifier plugin's id in containerd's configuration.
const BINDIR_PLUGIN: &str = "io.containerd.image-verifier.v1.bindir";

/// What `imagegate doctor` found about pull-time verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// Whether pulls reach an imagegate verifier (CRI pulls too, where CRI is enabled).
    pub ok: bool,
    pub detail: String,
}

/// Whether containerd's pulls reach an imagegate verifier: containerd `version` (`major`,
/// `minor`; `None` when it was not found), its configuration `config` (`None` when the file
/// does not exist: containerd's defaults), and `is_imagegate`, which tells whether a file in
/// the verifier directory runs imagegate.
pub fn hook_report(
    version: Option<(u32, u32)>,
    config: Option<&str>,
    is_imagegate: &dyn Fn(&Path) -> bool,
) -> HookReport {
    let bad = |detail: String| HookReport { ok: false, detail };
    let Some((major, minor)) = version else {
        return bad("containerd not found: pulls are not gated (the daemon still judges every image it finds)".to_owned());
    };
    if major < 2 {
        return bad(format!(
            "containerd {major}.{minor} has no image verifier hook (containerd 2.0 added it): pulls are not gated at pull time; the daemon judges every image once pulled and the kernel enforces"
        ));
    }
    let table: toml::Table = match config.map(str::parse::<toml::Table>) {
        None => toml::Table::new(),
        Some(Ok(table)) => table,
        Some(Err(error)) => {
            return bad(format!(
                "containerd's configuration does not parse: {error}"
            ))
        }
    };
    let version = table
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    let disabled: Vec<&str> = table
        .get("disabled_plugins")
        .and_then(toml::Value::as_array)
        .map(|list| list.iter().filter_map(toml::Value::as_str).collect())
        .unwrap_or_default();
    let plugins = table.get("plugins").and_then(toml::Value::as_table);
    let plugin = |id: &str| {
        plugins
            .and_then(|p| p.get(id))
            .and_then(toml::Value::as_table)
    };
    if disabled.contains(&BINDIR_PLUGIN) {
        return bad(format!("containerd {major}.{minor}: the {BINDIR_PLUGIN} plugin is disabled (disabled_plugins): pulls are not gated"));
    }
    let bin_dir = plugin(BINDIR_PLUGIN)
        .and_then(|p| p.get("bin_dir"))
        .and_then(toml::Value::as_str)
        .unwrap_or(CONTAINERD_DEFAULT_BIN_DIR);
    let entries: Vec<PathBuf> = std::fs::read_dir(bin_dir)
        .map(|dir| {
            let mut entries: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            entries
        })
        .unwrap_or_default();
    let max = plugin(BINDIR_PLUGIN)
        .and_then(|p| p.get("max_verifiers"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(10);
    let Some(position) = entries.iter().position(|path| is_imagegate(path)) else {
        return bad(format!(
            "containerd {major}.{minor} runs the verifiers in {bin_dir}, and none of them is imagegate: pulls are not gated (ln -s /usr/bin/imagegate {bin_dir}/imagegate, or point bin_dir at /usr/lib/imagegate/image-verifier: docs/containerd.md)"
        ));
    };
    if max >= 0 && i64::try_from(position).unwrap_or(i64::MAX) >= max {
        return bad(format!(
            "{} is entry {} of {bin_dir}, past max_verifiers = {max}: containerd skips it",
            entries[position].display(),
            position + 1
        ));
    }
    // CRI (kubelet's pulls) falls back to local pulls, which run no verifier, on these.
    let cri_disabled = disabled.iter().any(|id| {
        matches!(
            *id,
            "io.containerd.grpc.v1.cri" | "io.containerd.cri.v1.images"
        )
    });
    let (cri, cri_name) = if version >= 3 {
        (
            plugin("io.containerd.cri.v1.images"),
            "plugins.\"io.containerd.cri.v1.images\"",
        )
    } else {
        (
            plugin("io.containerd.grpc.v1.cri"),
            "plugins.\"io.containerd.grpc.v1.cri\"",
        )
    };
    let cri_containerd = cri
        .and_then(|c| c.get("containerd"))
        .and_then(toml::Value::as_table);
    let setting = |key: &str| {
        cri.and_then(|c| c.get(key))
            .or_else(|| cri_containerd.and_then(|c| c.get(key)))
    };
    let registry = cri
        .and_then(|c| c.get("registry"))
        .and_then(toml::Value::as_table);
    let non_empty = |key: &str| {
        registry
            .and_then(|r| r.get(key))
            .and_then(toml::Value::as_table)
            .is_some_and(|t| !t.is_empty())
    };
    let mut local = Vec::new();
    if setting("use_local_image_pull").and_then(toml::Value::as_bool) == Some(true) {
        local.push("use_local_image_pull = true".to_owned());
    }
    for key in ["mirrors", "configs", "auths"] {
        if non_empty(key) {
            local.push(format!("the deprecated registry.{key} table"));
        }
    }
    if setting("disable_snapshot_annotations").and_then(toml::Value::as_bool) == Some(false) {
        local.push("disable_snapshot_annotations = false".to_owned());
    }
    if setting("discard_unpacked_layers").and_then(toml::Value::as_bool) == Some(true) {
        local.push("discard_unpacked_layers = true".to_owned());
    }
    if setting("max_concurrent_downloads")
        .and_then(toml::Value::as_integer)
        .is_some_and(|n| n != 3)
    {
        local.push("max_concurrent_downloads (set it in the transfer plugin instead)".to_owned());
    }
    if setting("image_pull_with_sync_fs").and_then(toml::Value::as_bool) == Some(true) {
        local.push("image_pull_with_sync_fs = true".to_owned());
    }
    let verifier = entries[position].display();
    if !cri_disabled && !local.is_empty() {
        return bad(format!(
            "containerd {major}.{minor}: `ctr images pull` reaches the imagegate verifier ({verifier}), but CRI pulls (kubelet) do not: {} in {cri_name} makes CRI pull locally, without verifiers",
            local.join(", ")
        ));
    }
    HookReport {
        ok: true,
        detail: format!(
            "containerd {major}.{minor} asks the imagegate verifier ({verifier}) before {}; `ctr images pull --local` is not gated",
            if cri_disabled { "transfer-service pulls (ctr; CRI is disabled)" } else { "every transfer-service pull (ctr images pull, CRI PullImage and sandbox images)" }
        ),
    }
}

/// Whether `path` (an entry of a verifier directory) runs this imagegate: it is (a link to)
/// this binary, or a short script calling `imagegate containerd-verifier`.
#[must_use]
pub fn runs_imagegate(path: &Path) -> bool {
    let exe = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    if exe.is_some() && std::fs::canonicalize(path).ok() == exe {
        return true;
    }
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= 4096)
        && std::fs::read_to_string(path).is_ok_and(|text| {
            text.starts_with("#!")
                && text.contains("imagegate")
                && text.contains("containerd-verifier")
        })
}

/// containerd's `(major, minor)` from `BIN --version`.
#[must_use]
pub fn containerd_version(bin: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?.trim_start_matches('v');
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod hook_tests {
    use super::*;

    #[test]
    fn doctor_says_which_pulls_reach_the_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("imagegate"), "").unwrap();
        let ours = |path: &Path| path.ends_with("imagegate");
        let v3 = format!(
            "version = 3\n[plugins.\"io.containerd.image-verifier.v1.bindir\"]\n  bin_dir = \"{}\"\n",
            bin.display()
        );
        let report = hook_report(Some((2, 1)), Some(&v3), &ours);
        assert!(report.ok, "{report:?}");
        assert!(report.detail.contains("CRI PullImage"), "{report:?}");
        // 1.x: no hook.
        let report = hook_report(Some((1, 7)), Some(&v3), &ours);
        assert!(
            !report.ok && report.detail.contains("no image verifier hook"),
            "{report:?}"
        );
        assert!(!hook_report(None, None, &ours).ok);
        // CRI's local pulls.
        for (extra, named) in [
            ("[plugins.\"io.containerd.cri.v1.images\"]\n  use_local_image_pull = true\n", "use_local_image_pull"),
            ("[plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m.test\"]\n", "registry.mirrors"),
        ] {
            let report = hook_report(Some((2, 1)), Some(&format!("{v3}{extra}")), &ours);
            assert!(!report.ok && report.detail.contains(named), "{report:?}");
            assert!(report.detail.contains("CRI pulls (kubelet) do not"), "{report:?}");
        }
        // A version 2 file: CRI's settings under the old plugin name.
        let v2 = v3.replace("version = 3", "version = 2")
            + "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m.test\"]\n";
        assert!(!hook_report(Some((2, 1)), Some(&v2), &ours).ok);
        // CRI disabled: only ctr's pulls matter.
        let no_cri = v2.replace(
            "version = 2",
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]",
        );
        assert!(hook_report(Some((2, 1)), Some(&no_cri), &ours).ok);
        // No imagegate in bin_dir, or the plugin disabled.
        let report = hook_report(Some((2, 1)), Some(&v3), &|_: &Path| false);
        assert!(
            !report.ok && report.detail.contains("none of them is imagegate"),
            "{report:?}"
        );
        let disabled =
            format!("disabled_plugins = [\"{BINDIR_PLUGIN}\"]\n{v3}").replace("version = 3\n", "");
        assert!(
            !hook_report(
                Some((2, 1)),
                Some(&format!("version = 3\n{disabled}")),
                &ours
            )
            .ok
        );
    }
}
