//! `imagegate explain CONTAINER_ID|IMAGE_REF`: why a container may or may not run, asked of the
//! running daemon over its status socket.
//!
//! The daemon answers from what it already holds (it never verifies again for an explanation):
//! the container's record (the image it was created from; for a CRI container created from an
//! image id, the named images that id resolves to), each image's verdict with every signature
//! found and what each authority made of it, and the container's last decision events (at most
//! [`MAX_DENIALS`] per container, dropped with the container's record). This module holds the
//! answer's shape (shared by the daemon, the client and `--output json`), the socket protocol,
//! the client and the text rendering.
//!
//! Protocol: the status socket answers `imagegate status` with the status document, as it
//! always did, to a client that sends nothing (it shuts its sending side, or stays silent for
//! [`REQUEST_WAIT`]); a client may instead send one JSON line, a [`Request`], and gets that
//! request's answer ([`Answer`] for `explain`).

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{Mode, Policy, Requirement},
    verdict::{Outcome, Verdict},
    verify::{Evidence, FailureKind, ImageRef, Signer, SignerInfo, StringMatcher},
};

/// Decision events kept per container for `explain` (the newest).
pub const MAX_DENIALS: usize = 16;
/// Longest request line a client may send.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// How long the daemon waits for a request before it takes a silent client for `status`.
pub const REQUEST_WAIT: Duration = Duration::from_millis(500);
/// How long the client waits for the daemon's answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Why an explanation could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// Nothing listens on the socket, or it did not answer in time.
    #[error("the daemon does not answer on {socket} (is it running?)")]
    NotAnswering {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered something this client does not understand (another version).
    #[error("the daemon's answer on {socket} is not understood: {detail}")]
    Answer { socket: PathBuf, detail: String },
    /// A request line that is not a [`Request`].
    #[error("bad request: {0}")]
    Request(String),
    /// The configuration (for an in-process verification) does not load.
    #[error("loading the configuration")]
    Config(#[from] crate::config::ConfigError),
    /// The policy does not load.
    #[error("loading the policy")]
    Policy(#[from] crate::policy::PolicyError),
    /// Registry credentials do not load.
    #[error("reading registry credentials from {path}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: crate::discover::CredentialsError,
    },
    /// The registry client cannot be set up.
    #[error("setting up the registry client")]
    Registry(#[from] crate::discover::DiscoverError),
    /// The async runtime for an in-process verification does not start.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Verifies `image` in this process, as `imagegate verify` does: resolves it in its registry,
/// finds its signatures and applies `policy` (nothing cached, nothing persisted).
pub fn verify_in_process(
    image: &str,
    policy: &Policy,
    insecure_registries: Vec<String>,
    docker_config: Option<&Path>,
) -> Result<Verdict, ExplainError> {
    use crate::discover::{Credentials, DiscoveryConfig, RegistryClient};
    let credentials = match docker_config {
        Some(path) => {
            Credentials::from_docker_config(path).map_err(|source| ExplainError::Credentials {
                path: path.to_path_buf(),
                source,
            })?
        }
        None => Credentials::default(),
    };
    let client = RegistryClient::new(DiscoveryConfig {
        credentials,
        insecure_registries,
        ..DiscoveryConfig::default()
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExplainError::Runtime)?;
    Ok(runtime.block_on(crate::discover::verify_image(
        &client,
        policy,
        None,
        image,
        &crate::oci::host_platform(),
    )))
}

/// `imagegate explain`'s options.
#[derive(Debug, Clone)]
pub struct Options {
    /// A container id (or a unique prefix), an image reference, image id or manifest digest.
    pub target: String,
    /// Only this containerd namespace.
    pub namespace: Option<String>,
    /// The daemon's status socket.
    pub socket: PathBuf,
    /// The daemon's configuration: policy and registries for an in-process verification.
    pub config: PathBuf,
    /// One JSON document instead of text.
    pub json: bool,
}

/// `imagegate explain`: asks the daemon; when it does not answer, an image reference is
/// verified in process (and says so), a container cannot be explained. The text to print and
/// the exit code: 0 explained, 1 unknown (or ambiguous), 2 not answered. `Err`: not answered
/// and the in-process verification could not even start.
pub fn run(options: &Options) -> Result<(String, i32), ExplainError> {
    let request = Request::Explain {
        target: options.target.clone(),
        namespace: options.namespace.clone(),
    };
    let error = match ask(&options.socket, &request) {
        Ok(answer) => return Ok(render(&answer, options.json)),
        Err(error) => error,
    };
    tracing::warn!(socket = %options.socket.display(), error = %crate::telemetry::error_chain(&error), "the daemon did not answer");
    if !verifiable_in_process(&options.target) {
        let answer = Answer::Error {
            message: format!(
                "{}: {error}; a container, image id or digest can only be explained by the running daemon",
                options.target
            ),
        };
        return Ok(render(&answer, options.json));
    }
    let config = crate::config::Config::load(&options.config)?;
    let policy = Policy::load(&config.policy)?;
    crate::tuf::install_cached(&config, &policy);
    let verdict = verify_in_process(
        &options.target,
        &policy,
        config.registry.insecure.clone(),
        config.registry.docker_config.as_deref(),
    )?;
    tracing::info!(image = %options.target, outcome = ?verdict.outcome, "verified in process");
    let explanation = Explanation {
        target: options.target.clone(),
        answered_by: AnsweredBy::InProcess,
        daemon_error: Some(error.to_string()),
        container: None,
        images: vec![ImageExplanation::from_verdict(
            None,
            &options.target,
            &verdict,
            Some(&policy),
        )],
        denials: Vec::new(),
    };
    Ok(render(
        &Answer::Explained(Box::new(explanation)),
        options.json,
    ))
}

/// What a status-socket client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The status document (what a client sending nothing gets).
    Status,
    /// Explain a container (by id, or a unique prefix of one) or an image (by reference, image
    /// id or manifest digest), in one containerd namespace or all the daemon follows.
    Explain {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
}

impl Request {
    /// Parses a request line; nothing at all (or only white space) asks for the status.
    pub fn parse(bytes: &[u8]) -> Result<Self, ExplainError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::Status);
        }
        serde_json::from_slice(bytes).map_err(|e| ExplainError::Request(e.to_string()))
    }
}

/// The daemon's answer to [`Request::Explain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The container or image, explained.
    Explained(Box<Explanation>),
    /// No container or image of that name is known.
    Unknown { target: String, message: String },
    /// The target names several containers; their `namespace/id`s.
    Ambiguous {
        target: String,
        candidates: Vec<String>,
    },
    /// The request could not be answered.
    Error { message: String },
}

/// Who produced an explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    /// The running daemon, from what it enforces.
    Daemon,
    /// This process verified the image itself: the daemon did not answer.
    InProcess,
}

/// Why a container may or may not run, or what was made of an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// What was asked about.
    pub target: String,
    pub answered_by: AnsweredBy,
    /// Why the daemon was not asked (in-process answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_error: Option<String>,
    /// The container, when the target is one.
    pub container: Option<ContainerInfo>,
    /// The image(s) judged: the container's (for a container created from an image id, every
    /// named image the id resolves to), or the image asked about (one per namespace).
    pub images: Vec<ImageExplanation>,
    /// The container's last decision events, oldest first (at most [`MAX_DENIALS`]).
    pub denials: Vec<Denial>,
}

/// A container as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub namespace: String,
    pub id: String,
    /// The image reference it was created from, as containerd records it (an image id
    /// `sha256:<hex>` when kubelet created it from one and the image has no other name).
    pub image: String,
    /// Created from an image id: judged by the named images that id resolves to.
    pub from_image_id: bool,
    /// Kubernetes names (CRI containers): pod, its namespace, the container's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// containerd removed it (its record is kept a while so its denials can be explained).
    pub removed: bool,
    /// The trust the enforcement backend holds for its root (`trusted`, `untrusted`, ...);
    /// `None` when it has no root (not started, or removed).
    pub enforced_trust: Option<String>,
}

/// The state of an image's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictState {
    Trusted,
    Untrusted,
    /// Verification could not be carried out (fail closed).
    Error,
    /// Being verified now: not trusted until it ends.
    Pending,
    /// No verdict (not catalogued yet, or the image is gone).
    Unjudged,
}

impl From<Outcome> for VerdictState {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Trusted => Self::Trusted,
            Outcome::Untrusted => Self::Untrusted,
            Outcome::Error => Self::Error,
        }
    }
}

/// One image's verdict, in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageExplanation {
    /// containerd namespace (none for an in-process verification).
    pub namespace: Option<String>,
    /// The image reference.
    pub reference: String,
    /// The platform manifest judged.
    pub manifest_digest: Option<String>,
    /// The policy scope that applies, and its mode.
    pub scope: Option<String>,
    pub mode: Option<Mode>,
    pub verdict: VerdictState,
    /// The verdict in one sentence.
    pub summary: String,
    /// What the verdict does to the image's containers.
    pub effect: String,
    /// Authorities needed, and those satisfied.
    pub threshold: usize,
    pub satisfied: Vec<String>,
    /// Every signature found, with each authority's judgement.
    pub signatures: Vec<SignatureExplanation>,
    /// Reasons that concern no one signature ("no signatures found", "scope rejects ...").
    pub notes: Vec<String>,
    /// Unix seconds when decided.
    pub decided_at: Option<i64>,
}

/// Where a signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// The OCI 1.1 referrers API.
    Referrers,
    /// The `sha256-<hex>` referrers tag (registries without the API).
    ReferrersTag,
    /// cosign's legacy `sha256-<hex>.sig` tag.
    LegacySigTag,
    /// A label this version does not know (an older daemon's verdict).
    Unknown,
}

impl Location {
    /// Where a verdict reason's signature label (`referrer:…`, `referrers-tag:…`, `legacy:…`)
    /// says it was found.
    #[must_use]
    pub fn of_label(label: &str) -> Self {
        if label.starts_with("referrers-tag:") {
            Self::ReferrersTag
        } else if label.starts_with("referrer:") {
            Self::Referrers
        } else if label.starts_with("legacy:") {
            Self::LegacySigTag
        } else {
            Self::Unknown
        }
    }

    /// In words.
    #[must_use]
    pub fn words(self) -> &'static str {
        match self {
            Self::Referrers => "OCI 1.1 referrers API",
            Self::ReferrersTag => "sha256-<hex> referrers tag",
            Self::LegacySigTag => "legacy .sig tag",
            Self::Unknown => "registry",
        }
    }
}

/// One signature under one authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureExplanation {
    /// The verdict's label for it (`legacy:sha256-….sig#0`, `referrer:sha256:…`).
    pub signature: String,
    pub found_in: Location,
    /// The policy authority it was checked against.
    pub authority: Option<String>,
    /// What that authority is: `policy key ...` or `keyless identity ...`.
    pub authority_kind: Option<String>,
    pub accepted: bool,
    /// The failure's category when rejected.
    pub failure: Option<FailureKind>,
    /// Why, in words.
    pub why: String,
    /// Who signed, when accepted.
    pub signer: Option<SignerInfo>,
    /// What vouched for it besides its signer, when accepted: the transparency-log entry
    /// (Rekor v1 SET, or Rekor v2 inclusion proof and checkpoint) and RFC 3161 timestamps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence>,
}

/// A decision event of a container, as the daemon described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Denial {
    /// Unix seconds.
    pub time: f64,
    /// `denied`, or `audit` (would have been denied).
    pub verdict: String,
    /// `untrusted_image`, `drift`, `outside_image`, `unverified_layer`.
    pub reason: String,
    /// `exec`, `mmap`, `mprotect`.
    pub hook: String,
    /// The process's command and id.
    pub command: String,
    pub pid: u32,
    /// The file as the process saw it, when found.
    pub path: Option<String>,
}

impl Denial {
    /// From a described decision event (the JSON line the daemon writes); `None` when it is not
    /// one.
    #[must_use]
    pub fn from_event(event: &serde_json::Value) -> Option<Self> {
        let text = |key: &str| event[key].as_str().map(str::to_owned);
        Some(Self {
            time: event["time"].as_f64()?,
            verdict: text("verdict")?,
            reason: text("reason")?,
            hook: text("hook").unwrap_or_default(),
            command: text("command").unwrap_or_default(),
            pid: event["tgid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
            path: text("path"),
        })
    }
}

/// A decision reason in words.
#[must_use]
pub fn reason_words(reason: &str) -> &'static str {
    match reason {
        "untrusted_image" => "the container's image is not trusted, so it executes nothing",
        "drift" => "the file is not the image's: it was written into the container (drift)",
        "outside_image" => "the file lies outside the container's image (a volume or mount)",
        "unverified_layer" => "the file's layer belongs to no trusted image",
        _ => "denied by the enforcement rule",
    }
}

/// A failure category in words.
#[must_use]
pub fn failure_words(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::MediaType => "not a signature imagegate reads",
        FailureKind::PayloadFormat => "the signed payload is malformed",
        FailureKind::CertParse => "its certificate cannot be read",
        FailureKind::KeyParse => "the key cannot be used",
        FailureKind::Signature => "the signature does not verify with this authority's key",
        FailureKind::ManifestDigest => "it signs another image digest",
        FailureKind::DockerReference => "the signed reference is not this image's",
        FailureKind::TlogSet
        | FailureKind::TlogKeyUnknown
        | FailureKind::TlogBody
        | FailureKind::TlogMissing
        | FailureKind::TlogProof => "no valid transparency log entry",
        FailureKind::CertChain => "its certificate does not chain to a trusted CA",
        FailureKind::Sct => "its certificate's timestamps (SCT) are not valid",
        FailureKind::Identity => "the signer's identity is not one this authority allows",
        FailureKind::BundleFormat => "the bundle is malformed",
        FailureKind::SubjectDigest => "it signs another artifact",
        FailureKind::TrustRoot => "the trust material is unusable",
        FailureKind::Artifact => "the signature artifact could not be read",
        FailureKind::Timestamp => "its timestamp is not valid",
    }
}

fn matcher_words(matcher: &StringMatcher) -> String {
    match matcher {
        StringMatcher::Exact(text) => text.clone(),
        // The pattern as the policy gave it, without the anchors added when it was compiled.
        StringMatcher::Regex(regex) => {
            let text = regex.as_str();
            let given = text
                .strip_prefix("^(?:")
                .and_then(|t| t.strip_suffix(")$"))
                .unwrap_or(text);
            format!("matching /{given}/")
        }
    }
}

/// What authority `name` of scope `scope` is under `policy`: `policy key sha256:…` or
/// `keyless identity SUBJECT (issuer ISSUER)`; `None` when the policy has no such authority.
#[must_use]
pub fn authority_words(policy: &Policy, scope: &str, name: &str) -> Option<String> {
    let rule = if policy.default.scope == scope {
        &policy.default
    } else {
        &policy
            .scopes
            .iter()
            .find(|(_, rule)| rule.scope == scope)?
            .1
    };
    let Requirement::Signatures { authorities, .. } = &rule.requirement else {
        return None;
    };
    let authority = authorities.iter().find(|a| a.name == name)?;
    Some(match &authority.signer {
        Signer::Keys(keys) => {
            let fingerprints: Vec<String> = keys.iter().map(|k| k.key.fingerprint()).collect();
            format!(
                "policy key{} {}",
                if keys.len() == 1 { "" } else { "s" },
                fingerprints.join(", ")
            )
        }
        Signer::Certificate { identities, .. } => {
            let identities: Vec<String> = identities
                .iter()
                .map(|identity| match &identity.issuer {
                    Some(issuer) => format!(
                        "{} (issuer {})",
                        matcher_words(&identity.subject),
                        matcher_words(issuer)
                    ),
                    None => matcher_words(&identity.subject),
                })
                .collect();
            format!("keyless identity {}", identities.join(" or "))
        }
    })
}

fn signer_words(signer: &SignerInfo) -> String {
    match signer {
        SignerInfo::Key { fingerprint } => format!("signed with key {fingerprint}"),
        SignerInfo::Certificate { subjects, issuer } => format!(
            "signed by {}{}",
            subjects.join(", "),
            issuer
                .as_deref()
                .map(|i| format!(" (issuer {i})"))
                .unwrap_or_default()
        ),
    }
}

impl ImageExplanation {
    /// A verdict in words; `policy` (the one in force) names what each authority is.
    #[must_use]
    pub fn from_verdict(
        namespace: Option<&str>,
        reference: &str,
        verdict: &Verdict,
        policy: Option<&Policy>,
    ) -> Self {
        let mut signatures = Vec::new();
        let mut notes = Vec::new();
        for reason in &verdict.reasons {
            if reason.signature == "-" {
                notes.push(reason.detail.clone());
                continue;
            }
            let why = if reason.accepted {
                let by = reason.authority.as_deref().unwrap_or("the policy");
                let vouched = Evidence::vouched_for_by(&reason.evidence);
                match &reason.signer {
                    Some(signer) => format!("accepted by {by}: {}{vouched}", signer_words(signer)),
                    None => format!("accepted by {by}{vouched}"),
                }
            } else {
                match reason.kind {
                    Some(kind) => format!("rejected: {}: {}", failure_words(kind), reason.detail),
                    None => format!("rejected: {}", reason.detail),
                }
            };
            signatures.push(SignatureExplanation {
                signature: reason.signature.clone(),
                found_in: Location::of_label(&reason.signature),
                authority: reason.authority.clone(),
                authority_kind: reason
                    .authority
                    .as_deref()
                    .zip(policy)
                    .and_then(|(name, policy)| authority_words(policy, &verdict.scope, name)),
                accepted: reason.accepted,
                failure: reason.kind,
                why,
                signer: reason.signer.clone(),
                evidence: reason.evidence.clone(),
            });
        }
        let state = VerdictState::from(verdict.outcome);
        let summary = summary(verdict, &signatures, &notes);
        Self {
            namespace: namespace.map(str::to_owned),
            reference: reference.to_owned(),
            manifest_digest: (!verdict.digest.is_empty()).then(|| verdict.digest.clone()),
            scope: Some(verdict.scope.clone()),
            mode: Some(verdict.mode),
            verdict: state,
            summary,
            effect: effect(state, Some(verdict.mode)).to_owned(),
            threshold: verdict.threshold,
            satisfied: verdict.satisfied.clone(),
            signatures,
            notes,
            decided_at: Some(verdict.decided_at),
        }
    }

    /// An image without a verdict: being verified (`pending`) or not judged, `why`.
    #[must_use]
    pub fn without_verdict(
        namespace: Option<&str>,
        reference: &str,
        manifest_digest: Option<&str>,
        state: VerdictState,
        why: &str,
        policy: Option<&Policy>,
    ) -> Self {
        // The scope that would apply, from the policy in force.
        let rule = policy.zip(ImageRef::parse(reference).ok()).map(|(p, r)| {
            let rule = p.rule_for(&r);
            (rule.scope.clone(), rule.mode)
        });
        Self {
            namespace: namespace.map(str::to_owned),
            reference: reference.to_owned(),
            manifest_digest: manifest_digest.map(str::to_owned),
            scope: rule.as_ref().map(|(scope, _)| scope.clone()),
            mode: rule.as_ref().map(|(_, mode)| *mode),
            verdict: state,
            summary: why.to_owned(),
            effect: effect(state, rule.map(|(_, mode)| mode)).to_owned(),
            threshold: 0,
            satisfied: Vec::new(),
            signatures: Vec::new(),
            notes: Vec::new(),
            decided_at: None,
        }
    }
}

/// The verdict in one sentence (without the outcome itself, which goes beside it).
fn summary(verdict: &Verdict, signatures: &[SignatureExplanation], notes: &[String]) -> String {
    let mut accepted: Vec<&str> = signatures
        .iter()
        .filter(|s| s.accepted)
        .filter_map(|s| s.authority.as_deref())
        .collect();
    accepted.dedup();
    match verdict.outcome {
        Outcome::Trusted if accepted.is_empty() => notes
            .first()
            .map_or_else(|| "no signature needed".to_owned(), Clone::clone),
        Outcome::Trusted => format!("signature accepted by {}", accepted.join(", ")),
        Outcome::Untrusted if signatures.is_empty() => {
            if notes.iter().any(|n| n == NO_SIGNATURES) {
                format!(
                    "{NO_SIGNATURES} (looked in the OCI 1.1 referrers API, the sha256-<hex> \
                     referrers tag and the legacy .sig tag)"
                )
            } else {
                notes.join("; ")
            }
        }
        Outcome::Untrusted => {
            let found = signatures
                .iter()
                .map(|s| s.signature.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            // The same words as the verdict's own reason (which the text then leaves out).
            format!(
                "{found} signature{} found, none accepted enough: {} of {} required authorities satisfied",
                if found == 1 { "" } else { "s" },
                verdict.satisfied.len(),
                verdict.threshold,
            )
        }
        Outcome::Error => format!(
            "not verified, so not trusted (fail closed): {}",
            signatures
                .iter()
                .map(|s| s.why.as_str())
                .chain(notes.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// The verdict's reason when no signature was found (`verdict::evaluate`'s words).
const NO_SIGNATURES: &str = "no signatures found";

/// What a verdict does to the image's containers.
fn effect(state: VerdictState, mode: Option<Mode>) -> &'static str {
    match (state, mode) {
        (VerdictState::Trusted, _) => "allowed: its containers run the image's own files",
        (_, Some(Mode::Audit)) => "allowed and reported (audit mode)",
        (VerdictState::Pending, _) => {
            "denied until verification ends: its containers execute nothing meanwhile"
        }
        _ => "denied: its containers execute nothing",
    }
}

/// Whether `target` can only be an image reference (a containerd container id has neither `/`
/// nor `:` nor `@`).
#[must_use]
pub fn looks_like_reference(target: &str) -> bool {
    target.contains(['/', ':', '@'])
}

/// Whether `target` is a reference `imagegate verify` could verify without the daemon: not a
/// container id, and not an image id or digest (`sha256:...` read as a reference would send the
/// verifier to `docker.io/library/sha256`).
#[must_use]
pub fn verifiable_in_process(target: &str) -> bool {
    looks_like_reference(target)
        && !target.starts_with("sha256:")
        && ImageRef::parse(target).is_ok()
}

/// Whether image record name `name` is what `target` names: the same text, or the same
/// reference once both are normalised (`busybox` is `docker.io/library/busybox:latest`).
#[must_use]
pub fn names_image(target: &str, name: &str) -> bool {
    if target == name {
        return true;
    }
    let (Ok(mut wanted), Ok(have)) = (ImageRef::parse(target), ImageRef::parse(name)) else {
        return false;
    };
    if wanted.tag.is_none() && wanted.digest.is_none() {
        wanted.tag = Some("latest".to_owned());
    }
    wanted.to_string() == have.to_string()
}

/// Asks the daemon listening on `socket`.
pub fn ask(socket: &Path, request: &Request) -> Result<Answer, ExplainError> {
    let not_answering = |source| ExplainError::NotAnswering {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(not_answering)?;
    stream
        .set_read_timeout(Some(ANSWER_WAIT))
        .map_err(not_answering)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ExplainError::Request(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(not_answering)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(not_answering)?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).map_err(not_answering)?;
    serde_json::from_slice(&body).map_err(|e| ExplainError::Answer {
        socket: socket.to_path_buf(),
        detail: if body.is_empty() {
            "empty answer".to_owned()
        } else {
            e.to_string()
        },
    })
}

fn time_words(unix: f64) -> String {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "whole seconds of a timestamp"
    )]
    let seconds = unix.floor() as i64;
    crate::verify::time::format_rfc3339(seconds)
}

/// For people: what `imagegate explain` prints by default.
impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(c) = &self.container {
            writeln!(
                f,
                "container {} (namespace {}){}",
                c.id,
                c.namespace,
                if c.removed { ", removed" } else { "" }
            )?;
            if let (Some(pod), Some(pod_namespace)) = (&c.pod, &c.pod_namespace) {
                match &c.name {
                    Some(name) => writeln!(f, "  pod {pod_namespace}/{pod}, container {name}")?,
                    None => writeln!(f, "  pod {pod_namespace}/{pod} (its sandbox)")?,
                }
            }
            writeln!(f, "  created from: {}", c.image)?;
            if c.from_image_id {
                writeln!(
                    f,
                    "  (an image id: judged by the named images it resolves to, below)"
                )?;
            }
            if let Some(trust) = &c.enforced_trust {
                writeln!(f, "  enforced: {trust}")?;
            }
        }
        if self.images.is_empty() {
            writeln!(
                f,
                "image: none the daemon judged: the container counts as untrusted"
            )?;
        }
        for image in &self.images {
            write!(f, "{image}")?;
        }
        if self.container.is_some() {
            if self.denials.is_empty() {
                writeln!(f, "last denials: none recorded")?;
            } else {
                writeln!(f, "last denials (oldest first):")?;
                for denial in &self.denials {
                    writeln!(f, "  {denial}")?;
                }
            }
        }
        match self.answered_by {
            AnsweredBy::Daemon => writeln!(f, "answered by the running daemon"),
            AnsweredBy::InProcess => writeln!(
                f,
                "the daemon did not answer: {}; verified in this process, as `imagegate verify` does",
                self.daemon_error.as_deref().unwrap_or("no answer")
            ),
        }
    }
}

impl std::fmt::Display for ImageExplanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => writeln!(f, "image {} (namespace {namespace})", self.reference)?,
            None => writeln!(f, "image {}", self.reference)?,
        }
        writeln!(
            f,
            "  manifest digest: {}",
            self.manifest_digest.as_deref().unwrap_or("unknown")
        )?;
        match (&self.scope, self.mode) {
            (Some(scope), Some(mode)) => writeln!(
                f,
                "  policy scope: {scope} (mode {})",
                match mode {
                    Mode::Audit => "audit",
                    Mode::Enforce => "enforce",
                }
            )?,
            _ => writeln!(f, "  policy scope: unknown")?,
        }
        let verdict = match self.verdict {
            VerdictState::Trusted => "TRUSTED",
            VerdictState::Untrusted => "UNTRUSTED",
            VerdictState::Error => "ERROR",
            VerdictState::Pending => "PENDING",
            VerdictState::Unjudged => "NOT JUDGED",
        };
        writeln!(f, "  verdict: {verdict}: {}", self.summary)?;
        writeln!(f, "  effect: {}", self.effect)?;
        if let Some(at) = self.decided_at {
            writeln!(
                f,
                "  decided at: {}",
                crate::verify::time::format_rfc3339(at)
            )?;
        }
        if self.threshold > 0 {
            writeln!(
                f,
                "  authorities satisfied: {}/{}{}",
                self.satisfied.len(),
                self.threshold,
                if self.satisfied.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.satisfied.join(", "))
                }
            )?;
        }
        if self.signatures.is_empty() {
            if matches!(
                self.verdict,
                VerdictState::Trusted | VerdictState::Untrusted | VerdictState::Error
            ) {
                writeln!(f, "  signatures: none found")?;
            }
        } else {
            writeln!(f, "  signatures:")?;
            for s in &self.signatures {
                let authority = match (&s.authority, &s.authority_kind) {
                    (Some(name), Some(kind)) => format!("authority {name} ({kind})"),
                    (Some(name), None) => format!("authority {name}"),
                    _ => "the policy".to_owned(),
                };
                writeln!(
                    f,
                    "    {} in the {}, {authority}: {}",
                    s.signature,
                    s.found_in.words(),
                    s.why
                )?;
            }
        }
        // Notes the summary already says are not repeated.
        for note in self
            .notes
            .iter()
            .filter(|note| !self.summary.contains(note.as_str()))
        {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} of {} by {} (pid {}): {}",
            time_words(self.time),
            self.verdict,
            self.hook,
            self.path
                .as_deref()
                .unwrap_or("a file not found in its layer"),
            if self.command.is_empty() {
                "?"
            } else {
                &self.command
            },
            self.pid,
            self.reason
        )?;
        write!(f, " ({})", reason_words(&self.reason))
    }
}

/// What the daemon's answer means to `imagegate explain`: the text to print (or JSON) and the
/// exit code (0 explained, 1 unknown or ambiguous).
#[must_use]
pub fn render(answer: &Answer, json: bool) -> (String, i32) {
    let code = match answer {
        Answer::Explained(_) => 0,
        Answer::Unknown { .. } | Answer::Ambiguous { .. } => 1,
        Answer::Error { .. } => 2,
    };
    if json {
        let text = match answer {
            Answer::Explained(explanation) => serde_json::to_string_pretty(explanation),
            other => serde_json::to_string_pretty(other),
        };
        return (text.unwrap_or_default() + "\n", code);
    }
    let text = match answer {
        Answer::Explained(explanation) => explanation.to_string(),
        Answer::Unknown { message, .. } => format!("{message}\n"),
        Answer::Ambiguous { target, candidates } => format!(
            "{target} names several containers; name one (or give --namespace):\n{}\n",
            candidates
                .iter()
                .map(|c| format!("  {c}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Answer::Error { message } => format!("{message}\n"),
    };
    (text, code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::verdict::Reason;

    fn verdict(outcome: Outcome, reasons: Vec<Reason>) -> Verdict {
        let mut v = Verdict::error(
            "r.test/app:1",
            &format!("sha256:{}", "a".repeat(64)),
            "r.test/**",
            Mode::Enforce,
            "h",
            None,
            String::new(),
        );
        v.outcome = outcome;
        v.reasons = reasons;
        v.threshold = 1;
        v
    }

    fn reason(signature: &str, accepted: bool, kind: Option<FailureKind>) -> Reason {
        Reason {
            signature: signature.into(),
            authority: Some("release".into()),
            accepted,
            kind,
            detail: if accepted {
                "signature accepted by release".into()
            } else {
                "signature does not verify with key sha256:k".into()
            },
            signer: accepted.then(|| SignerInfo::Key {
                fingerprint: "sha256:k".into(),
            }),
            evidence: Vec::new(),
        }
    }

    #[test]
    fn requests_parse_and_silence_asks_for_the_status() {
        assert_eq!(Request::parse(b"").unwrap(), Request::Status);
        assert_eq!(Request::parse(b" \n").unwrap(), Request::Status);
        assert_eq!(
            Request::parse(br#"{"request":"explain","target":"c1"}"#).unwrap(),
            Request::Explain {
                target: "c1".into(),
                namespace: None
            }
        );
        let line = serde_json::to_vec(&Request::Explain {
            target: "a/b:1".into(),
            namespace: Some("k8s.io".into()),
        })
        .unwrap();
        assert!(matches!(
            Request::parse(&line).unwrap(),
            Request::Explain { namespace: Some(n), .. } if n == "k8s.io"
        ));
        assert!(Request::parse(b"status please").is_err());
    }

    #[test]
    fn labels_say_where_a_signature_was_found() {
        assert_eq!(
            Location::of_label("referrer:sha256:ab"),
            Location::Referrers
        );
        assert_eq!(
            Location::of_label("referrers-tag:sha256:ab"),
            Location::ReferrersTag
        );
        assert_eq!(
            Location::of_label("legacy:sha256-abcdef.sig#0"),
            Location::LegacySigTag
        );
        assert_eq!(Location::of_label("-"), Location::Unknown);
        assert_eq!(Location::LegacySigTag.words(), "legacy .sig tag");
    }

    #[test]
    fn references_and_container_ids_are_told_apart() {
        assert!(looks_like_reference("r.test/app:1"));
        assert!(looks_like_reference("busybox:latest"));
        assert!(looks_like_reference(&format!("sha256:{}", "a".repeat(64))));
        assert!(!looks_like_reference("c-untrusted"));
        assert!(!looks_like_reference(&"a".repeat(64)));
        assert!(verifiable_in_process("r.test/app:1"));
        assert!(verifiable_in_process("busybox:1"));
        assert!(!verifiable_in_process("c-untrusted"));
        assert!(!verifiable_in_process(&format!(
            "sha256:{}",
            "a".repeat(64)
        )));
        assert!(!verifiable_in_process("sha256:abc"));
        assert!(!verifiable_in_process("UPPER/case:1"));
        assert!(names_image("busybox", "docker.io/library/busybox:latest"));
        assert!(names_image("r.test/app:1", "r.test/app:1"));
        assert!(!names_image("r.test/app:1", "r.test/app:2"));
        assert!(!names_image("r.test/app", "r.test/app:2"));
    }

    #[test]
    fn an_unsigned_image_is_explained_in_words() {
        let v = verdict(
            Outcome::Untrusted,
            vec![Reason {
                signature: "-".into(),
                authority: None,
                accepted: false,
                kind: None,
                detail: "no signatures found".into(),
                signer: None,
                evidence: Vec::new(),
            }],
        );
        let image = ImageExplanation::from_verdict(Some("default"), "r.test/app:1", &v, None);
        assert_eq!(image.verdict, VerdictState::Untrusted);
        assert!(image.signatures.is_empty());
        assert!(
            image.summary.starts_with("no signatures found (looked in"),
            "{}",
            image.summary
        );
        let text = image.to_string();
        assert!(
            text.contains("policy scope: r.test/** (mode enforce)"),
            "{text}"
        );
        assert!(
            text.contains(
                "verdict: UNTRUSTED: no signatures found (looked in the OCI 1.1 referrers API"
            ),
            "{text}"
        );
        assert!(!text.contains("note:"), "the summary says it: {text}");
        assert!(
            text.contains("effect: denied: its containers execute nothing"),
            "{text}"
        );
        assert!(text.contains("signatures: none found"), "{text}");
        assert!(text.contains(&format!("manifest digest: sha256:{}", "a".repeat(64))));
    }

    #[test]
    fn each_signature_says_where_it_was_found_and_who_judged_it() {
        let v = verdict(
            Outcome::Trusted,
            vec![
                reason("referrer:sha256:aa", false, Some(FailureKind::Signature)),
                reason("legacy:sha256-abcdef.sig#0", true, None),
            ],
        );
        let image = ImageExplanation::from_verdict(Some("default"), "r.test/app:1", &v, None);
        assert_eq!(image.summary, "signature accepted by release");
        assert_eq!(image.signatures[0].found_in, Location::Referrers);
        assert!(!image.signatures[0].accepted);
        assert_eq!(
            image.signatures[0].why,
            "rejected: the signature does not verify with this authority's key: signature does not verify with key sha256:k"
        );
        assert_eq!(image.signatures[1].found_in, Location::LegacySigTag);
        assert_eq!(
            image.signatures[1].why,
            "accepted by release: signed with key sha256:k"
        );
        let text = image.to_string();
        assert!(
            text.contains("legacy:sha256-abcdef.sig#0 in the legacy .sig tag, authority release: accepted by release"),
            "{text}"
        );
        let rejected = verdict(
            Outcome::Untrusted,
            vec![reason(
                "referrers-tag:sha256:bb",
                false,
                Some(FailureKind::Signature),
            )],
        );
        let image = ImageExplanation::from_verdict(None, "r.test/app:1", &rejected, None);
        assert_eq!(
            image.summary,
            "1 signature found, none accepted enough: 0 of 1 required authorities satisfied"
        );
        assert!(image
            .to_string()
            .contains("in the sha256-<hex> referrers tag, authority release: rejected"));
    }

    /// Which authority judged a signature, in words: a policy key by its fingerprint, a keyless
    /// identity by subject and issuer.
    #[test]
    fn authorities_say_whether_they_are_keys_or_keyless_identities() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/generated");
        let text = format!(
            "version = 1\n[trust.test]\ntrusted_root = \"{root}\"\n[default]\nrequire = \"reject\"\n\
             [[scope]]\nmatch = \"r.test/**\"\nrequire = \"signatures\"\nthreshold = 1\n\
             [[scope.keys]]\nname = \"release\"\npath = \"{key}\"\n\
             [[scope.keyless]]\nname = \"ci\"\ntrust = \"test\"\n\
             issuer = \"https://issuer.imagegate.test\"\nsubject_regex = \"^ci@.*$\"\n",
            root = fixtures.join("trust/trusted_root.json").display(),
            key = fixtures.join("legacy-keys/p256.pub").display(),
        );
        let policy =
            crate::policy::file::parse(std::path::Path::new("/t/policy.toml"), &text).unwrap();
        // The scope as verdicts name it (the pattern as the policy prints it).
        let scope = policy.scopes[0].1.scope.clone();
        let key = authority_words(&policy, &scope, "release").unwrap();
        assert!(key.starts_with("policy key sha256:"), "{key}");
        assert_eq!(
            authority_words(&policy, &scope, "ci").as_deref(),
            Some("keyless identity matching /^ci@.*$/ (issuer https://issuer.imagegate.test)")
        );
        assert_eq!(authority_words(&policy, &scope, "nobody"), None);
        assert_eq!(authority_words(&policy, "default", "release"), None);
        // Through a verdict: the rejected signature names the keyless authority's identity.
        let mut v = verdict(Outcome::Untrusted, Vec::new());
        v.scope.clone_from(&scope);
        v.reasons = vec![Reason {
            authority: Some("ci".into()),
            ..reason("referrer:sha256:cc", false, Some(FailureKind::Identity))
        }];
        let image = ImageExplanation::from_verdict(None, "r.test/app:1", &v, Some(&policy));
        assert!(
            image.signatures[0]
                .authority_kind
                .as_deref()
                .is_some_and(|k| k.starts_with("keyless identity")),
            "{image:?}"
        );
        assert!(image.signatures[0]
            .why
            .starts_with("rejected: the signer's identity is not one this authority allows"));
    }

    #[test]
    fn audit_mode_and_pending_verdicts_say_what_they_do() {
        let mut v = verdict(Outcome::Untrusted, Vec::new());
        v.mode = Mode::Audit;
        let image = ImageExplanation::from_verdict(None, "r.test/app:1", &v, None);
        assert_eq!(image.effect, "allowed and reported (audit mode)");
        assert!(image.to_string().contains("(mode audit)"));
        let pending = ImageExplanation::without_verdict(
            None,
            "r.test/app:1",
            None,
            VerdictState::Pending,
            "being verified",
            None,
        );
        assert!(pending.effect.starts_with("denied until verification ends"));
        assert!(pending
            .to_string()
            .contains("verdict: PENDING: being verified"));
    }

    #[test]
    fn denials_and_containers_are_explained_in_words() {
        let event = serde_json::json!({
            "time": 1_796_000_000.25, "verdict": "denied", "reason": "untrusted_image",
            "hook": "exec", "command": "runc:[2:INIT]", "tgid": 42, "path": "/bin/busybox",
            "container": {"namespace": "default", "id": "c1"},
        });
        let denial = Denial::from_event(&event).unwrap();
        assert_eq!(denial.pid, 42);
        assert_eq!(
            denial.to_string(),
            "2026-11-30T00:53:20Z denied exec of /bin/busybox by runc:[2:INIT] (pid 42): \
             untrusted_image (the container's image is not trusted, so it executes nothing)"
        );
        assert!(Denial::from_event(&serde_json::json!({"verdict": "denied"})).is_none());
        let explanation = Explanation {
            target: "c1".into(),
            answered_by: AnsweredBy::Daemon,
            daemon_error: None,
            container: Some(ContainerInfo {
                namespace: "k8s.io".into(),
                id: "c1".into(),
                image: "r.test/app:1".into(),
                from_image_id: false,
                pod: Some("web".into()),
                pod_namespace: Some("default".into()),
                name: Some("main".into()),
                removed: true,
                enforced_trust: None,
            }),
            images: Vec::new(),
            denials: vec![denial],
        };
        let answer = Answer::Explained(Box::new(explanation.clone()));
        let (text, code) = render(&answer, false);
        assert_eq!(code, 0);
        assert!(text.starts_with("container c1 (namespace k8s.io), removed\n  pod default/web, container main\n  created from: r.test/app:1\n"), "{text}");
        assert!(
            text.contains(
                "last denials (oldest first):\n  2026-11-30T00:53:20Z denied exec of /bin/busybox"
            ),
            "{text}"
        );
        assert!(text.ends_with("answered by the running daemon\n"), "{text}");
        // JSON: the explanation itself, and it reads back.
        let (json, _) = render(&answer, true);
        let back: Explanation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, explanation);
        // The daemon's answer round-trips through its tagged form.
        let wire = serde_json::to_string(&answer).unwrap();
        assert!(wire.contains(r#""answer":"explained""#), "{wire}");
        assert_eq!(serde_json::from_str::<Answer>(&wire).unwrap(), answer);
        let (text, code) = render(
            &Answer::Unknown {
                target: "x".into(),
                message: "no container or image x".into(),
            },
            false,
        );
        assert_eq!((text.as_str(), code), ("no container or image x\n", 1));
        let (text, code) = render(
            &Answer::Ambiguous {
                target: "c".into(),
                candidates: vec!["default/c1".into(), "default/c2".into()],
            },
            false,
        );
        assert_eq!(code, 1);
        assert!(text.contains("  default/c1\n  default/c2"), "{text}");
    }
}
