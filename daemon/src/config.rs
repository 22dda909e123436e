//! The daemon's configuration file (TOML, `/etc/imagegate/imagegate.toml`). Strict: an unknown
//! key is an error, because a mistyped setting in a security daemon must not be ignored. Every
//! setting has a default, chosen to fail closed.
//!
//! [`SETTINGS`] is the one list of every setting with its type, default and meaning: the
//! reference `docs/config.md` is generated from it (`imagegate config reference`, `cargo xtask
//! docs`), and tests check it against the structs below and their `Default`s.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::enforce::{Drift, Mode, OutsideImage};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/imagegate/imagegate.toml";

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `file:line: field: message`, the way compilers and the policy loader report.
    #[error("{}:{}: {field}: {message}", path.display(), line.map_or_else(|| "?".to_owned(), |l| l.to_string()))]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        field: String,
        message: String,
    },
}

/// Which enforcement backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// BPF LSM where the kernel runs it, fanotify otherwise.
    Auto,
    /// BPF LSM only (fail if unavailable).
    BpfLsm,
    /// fanotify permission events only.
    Fanotify,
}

/// How log lines are written (decision events are always JSON lines on stdout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// JSON lines unless stderr is a terminal (journald, containers get JSON; a person gets text).
    #[default]
    Auto,
    /// Always JSON lines.
    Json,
    /// Always human-readable text.
    Human,
}

/// The configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `enforce` (deny) or `audit` (report, allow). Default: enforce.
    pub mode: Mode,
    /// Exec from a container's writable layer: `deny` or `allow`. Default: deny.
    pub drift: Drift,
    /// What a trusted container may execute from outside its image: `allow` or `deny`.
    pub outside_image: OutsideImage,
    /// `auto`, `bpf-lsm` or `fanotify`. Default: auto.
    pub backend: BackendChoice,
    /// The policy file (TOML, or containers-policy.json by extension).
    pub policy: PathBuf,
    /// Where verdicts persist.
    pub state_dir: PathBuf,
    /// Decision events are also appended here as JSON lines (stdout always gets them).
    pub event_log: Option<PathBuf>,
    /// Unix socket that `imagegate status` and `imagegate explain` ask.
    pub status_socket: PathBuf,
    /// Root-only unix socket where `imagegate containerd-verifier` asks for pull verdicts.
    pub verify_socket: PathBuf,
    /// BPF pin directory.
    pub pin_dir: PathBuf,
    /// Where metrics and health are served: a unix socket path, `host:port`, or `off`.
    pub metrics_listen: String,
    /// Where `/healthz` and `/readyz` are also served on a listener of their own: a unix
    /// socket path, `host:port`, or `off`.
    pub health_listen: String,
    /// `auto`, `json` or `human`.
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax); the `RUST_LOG` environment variable overrides it.
    pub log_level: String,
    /// containerd.
    pub containerd: ContainerdConfig,
    /// Registries.
    pub registry: RegistryConfig,
    /// The TUF repository keeping the Sigstore public-good trusted root current.
    pub tuf: TufConfig,
}

/// Where the Sigstore public-good trusted root (`trusted_root = "public-good"` in a policy) is
/// refreshed from through TUF (`crate::tuf`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TufConfig {
    /// Repository base URL (`https://`, `http://` or `file://`).
    pub repository: String,
    /// A local copy of the repository, used instead of `repository` when set (air-gapped).
    pub mirror_dir: Option<PathBuf>,
    /// Seconds between refreshes (at least 60).
    pub refresh_interval_seconds: u64,
}

impl Default for TufConfig {
    fn default() -> Self {
        Self {
            repository: crate::tuf::DEFAULT_REPOSITORY.to_owned(),
            mirror_dir: None,
            refresh_interval_seconds: 3600,
        }
    }
}

/// How to reach containerd and where its snapshots live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// containerd's root directory; the overlayfs snapshotter's `snapshots` directory under it
    /// is the enforcement scope.
    pub root: PathBuf,
}

/// Registry access for signature discovery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries reached over plain HTTP (`host:port`); all others use HTTPS.
    pub insecure: Vec<String>,
    /// A docker `config.json` with credentials.
    pub docker_config: Option<PathBuf>,
    /// Seconds per registry request.
    pub timeout_seconds: u64,
    /// Seconds one image's whole verification may take (all its requests, waiting included).
    pub verify_deadline_seconds: u64,
    /// Verifications running at once against one registry.
    pub concurrency_per_registry: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            drift: Drift::Deny,
            outside_image: OutsideImage::Allow,
            backend: BackendChoice::Auto,
            policy: PathBuf::from("/etc/imagegate/policy.toml"),
            state_dir: PathBuf::from("/var/lib/imagegate"),
            event_log: None,
            status_socket: PathBuf::from("/run/imagegate/status.sock"),
            verify_socket: PathBuf::from("/run/imagegate/verify.sock"),
            pin_dir: PathBuf::from(imagegate_common::PIN_DIR),
            metrics_listen: "/run/imagegate/metrics.sock".to_owned(),
            health_listen: "off".to_owned(),
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
            containerd: ContainerdConfig::default(),
            registry: RegistryConfig::default(),
            tuf: TufConfig::default(),
        }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            root: PathBuf::from("/var/lib/containerd"),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            docker_config: None,
            timeout_seconds: 10,
            verify_deadline_seconds: 60,
            concurrency_per_registry: 8,
        }
    }
}

impl ContainerdConfig {
    /// The overlayfs snapshotter's `snapshots` directory: the enforcement scope.
    #[must_use]
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots")
    }
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text; errors name the file, line and key. Values that parse as
    /// TOML but cannot be used (a metrics address, a log filter) are errors here too, so that
    /// `imagegate config check` catches everything the daemon would refuse.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let error = |line: Option<usize>, field: String, message: String| ConfigError::Parse {
            path: path.to_owned(),
            line,
            field,
            message,
        };
        let config = Config::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let offset = e.span().map(|span| span.start.min(text.len()));
            let line = offset.map(|offset| text[..offset].matches('\n').count() + 1);
            let field = offset
                .and_then(|offset| key_at(text, offset))
                .or_else(|| unknown_field(e.message()))
                .unwrap_or_else(|| "-".to_owned());
            error(line, field, e.message().to_owned())
        })?;
        if let Err(message) = crate::metrics::Listen::parse(&config.metrics_listen) {
            return Err(error(
                line_of_key(text, "metrics_listen"),
                "metrics_listen".into(),
                message,
            ));
        }
        if let Err(message) = crate::metrics::Listen::parse(&config.health_listen) {
            return Err(error(
                line_of_key(text, "health_listen"),
                "health_listen".into(),
                message,
            ));
        }
        if !(config.tuf.repository.starts_with("https://")
            || config.tuf.repository.starts_with("http://")
            || config.tuf.repository.starts_with("file:///"))
        {
            return Err(error(
                line_of_table_key(text, "tuf", "repository"),
                "tuf.repository".into(),
                "an https://, http:// or file:/// URL".into(),
            ));
        }
        if config.tuf.refresh_interval_seconds < 60 {
            return Err(error(
                line_of_table_key(text, "tuf", "refresh_interval_seconds"),
                "tuf.refresh_interval_seconds".into(),
                "at least 60".into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log_level) {
            return Err(error(
                line_of_key(text, "log_level"),
                "log_level".into(),
                e.to_string(),
            ));
        }
        Ok(config)
    }
}

/// The dotted key (`containerd.socket`) defined on the line holding byte `offset`: the key
/// before `=` on that line, under the last `[table]` header above it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') || !line.contains('=') {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_owned(),
    })
}

/// The name in serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The line where `key` of `[table]` is set, if it is.
fn line_of_table_key(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') && !line.starts_with("[[") {
            current = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
        } else if current == table
            && line
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(index + 1);
        }
    }
    None
}

/// The line where top-level `key` is set, if it is.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

/// One setting of the configuration file, for the generated reference.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Dotted key (`containerd.socket`).
    pub key: &'static str,
    /// The TOML type and allowed values.
    pub kind: &'static str,
    /// The default as a TOML value; empty when the setting is unset by default.
    pub default: &'static str,
    /// What it does and why one would change it.
    pub doc: &'static str,
}

/// Every setting: the source of `docs/config.md`. Tests check that it names every field of
/// [`Config`] and that its defaults are [`Config::default`]'s.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "mode",
        kind: "`\"enforce\"` \\| `\"audit\"`",
        default: "\"enforce\"",
        doc: "`enforce` denies exec (and, with BPF LSM, executable mappings) of files from layers no trusted image vouches for; `audit` allows them and reports each as an event. Policy scopes can set `mode = \"audit\"` for themselves (docs/rollout.md).",
    },
    Setting {
        key: "drift",
        kind: "`\"deny\"` \\| `\"allow\"`",
        default: "\"deny\"",
        doc: "Exec of a file written into a container's writable layer after it started (drift): `deny` treats it as unverified, `allow` lets it run.",
    },
    Setting {
        key: "outside_image",
        kind: "`\"allow\"` \\| `\"deny\"`",
        default: "\"allow\"",
        doc: "What a container of a trusted image may execute from outside its image's layers (volumes, tmpfs, `memfd`, files of other layers): `allow` lets it run, `deny` denies it with reason `outside_image`. BPF LSM sees all of these; fanotify sees only files on the file systems it marks (the snapshotter's), so it cannot deny tmpfs or `memfd` executables (docs/enforcement.md). A container of an untrusted image runs none of them either way.",
    },
    Setting {
        key: "backend",
        kind: "`\"auto\"` \\| `\"bpf-lsm\"` \\| `\"fanotify\"`",
        default: "\"auto\"",
        doc: "`auto` uses BPF LSM where the kernel runs it (`bpf` in `/sys/kernel/security/lsm` and the programs load), fanotify otherwise; the other two force one and fail when it cannot start. `imagegate doctor` tells which one this kernel gets and why.",
    },
    Setting {
        key: "policy",
        kind: "path",
        default: "\"/etc/imagegate/policy.toml\"",
        doc: "The policy: TOML (docs/policy.md), a containers-policy.json by its `.json` extension, or a containerd configuration holding the CRI `policy.v1` section a widely shared tutorial shows (only that section is read; docs/policy.md). Reloaded on SIGHUP (`systemctl reload imagegate`); a policy that does not load is refused and the old one kept.",
    },
    Setting {
        key: "state_dir",
        kind: "path",
        default: "\"/var/lib/imagegate\"",
        doc: "Where verdicts persist (`verdicts.redb`), so that a registry outage does not stop images verified before; also the TUF cache of the public-good trusted root (`tuf/`: verified metadata, the last good `trusted_root.json` and its `state.json`).",
    },
    Setting {
        key: "event_log",
        kind: "path (optional)",
        default: "",
        doc: "Decision events are written to stdout as JSON lines, and also appended to this file when set.",
    },
    Setting {
        key: "status_socket",
        kind: "path",
        default: "\"/run/imagegate/status.sock\"",
        doc: "The unix socket `imagegate status` and `imagegate explain` ask.",
    },
    Setting {
        key: "verify_socket",
        kind: "path",
        default: "\"/run/imagegate/verify.sock\"",
        doc: "A unix socket (mode 0600, answering root only) where `imagegate containerd-verifier`, called by containerd 2.x's image verifier hook before a pull, asks the daemon for its verdict on the image (docs/containerd.md). When nothing listens there the verifier judges in process with this file's settings and policy.",
    },
    Setting {
        key: "pin_dir",
        kind: "path",
        default: "\"/sys/fs/bpf/imagegate\"",
        doc: "Where the BPF LSM backend pins its programs and maps, on a bpffs mount; enforcement survives the daemon through these pins.",
    },
    Setting {
        key: "metrics_listen",
        kind: "string: socket path \\| `host:port` \\| `\"off\"`",
        default: "\"/run/imagegate/metrics.sock\"",
        doc: "Where Prometheus metrics (`/metrics`) and the health endpoints (`/healthz`, `/readyz`) are served over HTTP/1.1: an absolute path is a unix socket (reachable only by root by default), `host:port` a TCP listener (for example `\"127.0.0.1:9464\"`, or `\"0.0.0.0:9464\"` for a scraper on the pod network), `off` serves nothing. Each listener serves at most 32 connections at once, at most 4 from one peer address (TCP), and closes a connection that sends no request within 2 s.",
    },
    Setting {
        key: "health_listen",
        kind: "string: socket path \\| `host:port` \\| `\"off\"`",
        default: "\"off\"",
        doc: "A listener of its own for `/healthz` and `/readyz` (and nothing else), with its own connection budget: connections to `metrics_listen` (a scraper, or a pod holding connections open) cannot starve kubelet's probes. The Kubernetes manifests and chart use `\"0.0.0.0:9465\"` (the pod's address, which kubelet probes) and a NetworkPolicy that admits only the scraper's namespace to the metrics port. `off`: health is served on `metrics_listen` only.",
    },
    Setting {
        key: "log_format",
        kind: "`\"auto\"` \\| `\"json\"` \\| `\"human\"`",
        default: "\"auto\"",
        doc: "Log lines on stderr: `auto` writes JSON lines unless stderr is a terminal (journald and container logs get JSON, a person at a terminal gets text).",
    },
    Setting {
        key: "log_level",
        kind: "string (`RUST_LOG` syntax)",
        default: "\"info\"",
        doc: "Log filter, e.g. `\"info\"` or `\"info,imagegate::discover=debug\"`. The `RUST_LOG` environment variable overrides it.",
    },
    Setting {
        key: "containerd.socket",
        kind: "path",
        default: "\"/run/containerd/containerd.sock\"",
        doc: "containerd's gRPC socket. The daemon waits for it at start and reconnects (and reconciles) when containerd restarts.",
    },
    Setting {
        key: "containerd.root",
        kind: "path",
        default: "\"/var/lib/containerd\"",
        doc: "containerd's root directory. Its overlayfs snapshotter's `snapshots` directory is the enforcement scope: files outside it (the host's own) are left alone.",
    },
    Setting {
        key: "registry.insecure",
        kind: "array of `host:port`",
        default: "[]",
        doc: "Registries reached over plain HTTP when fetching signatures; every other registry uses HTTPS.",
    },
    Setting {
        key: "registry.docker_config",
        kind: "path (optional)",
        default: "",
        doc: "A docker `config.json` with credentials for private registries.",
    },
    Setting {
        key: "registry.timeout_seconds",
        kind: "integer",
        default: "10",
        doc: "Seconds per registry request. A registry that does not answer gives an `error` verdict: denied in enforce mode, retried later.",
    },
    Setting {
        key: "registry.verify_deadline_seconds",
        kind: "integer (at least 1)",
        default: "60",
        doc: "Seconds one image's whole verification may take once its registry has a slot for it (every request included). Verification runs beside the event loop, never in it; an image past its deadline gets an `error` verdict (denied in enforce mode) and is retried after 0.5 s, then twice as long each time, up to every 5 minutes. Until its verdict, an image is not trusted. A reconciliation (start, reload) swaps its table in at most this long after its catalogue: verdicts not in by then are `error`, retried the same way.",
    },
    Setting {
        key: "registry.concurrency_per_registry",
        kind: "integer (at least 1)",
        default: "8",
        doc: "Verifications running at once against one registry (16 at most in all): a slow registry holds only its own images' verdicts. Images waiting for one of their registry's slots are pending (not trusted) meanwhile.",
    },
    Setting {
        key: "tuf.repository",
        kind: "URL (`https://`, `http://`, `file:///`)",
        default: "\"https://tuf-repo-cdn.sigstore.dev\"",
        doc: "The TUF repository that keeps the Sigstore public-good trusted root current, for policies whose trust entry says `trusted_root = \"public-good\"` (docs/verification.md \"Trusted roots\"): Sigstore's own, or an operator's mirror of it (metadata at the top, targets under `targets/`). The client starts from the Sigstore TUF root built into imagegate and checks signatures, thresholds, expiry and rollback as TUF says; metadata and the last good `trusted_root.json` are cached under `state_dir/tuf/`. Fetched only while the policy names `public-good`, with the registry request timeout.",
    },
    Setting {
        key: "tuf.mirror_dir",
        kind: "path (optional)",
        default: "",
        doc: "A local directory holding a copy of the TUF repository (same layout), used instead of `tuf.repository`: air-gapped nodes refresh from it with no network. The operator keeps it current; the same TUF checks apply.",
    },
    Setting {
        key: "tuf.refresh_interval_seconds",
        kind: "integer (at least 60)",
        default: "3600",
        doc: "Seconds between refreshes of the public-good trusted root (a failed refresh is retried after at most 60 s). The last good root is used until its TUF metadata expires (the earliest `expires` of root, timestamp, snapshot and targets; Sigstore's timestamp lasts days); after that images whose authorities need it get an `error` verdict (denied in enforce mode) until a refresh succeeds.",
    },
];

/// The configuration reference (`docs/config.md`), generated from [`SETTINGS`].
#[must_use]
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated from daemon/src/config.rs (SETTINGS) by `cargo xtask docs` \
         (`imagegate config reference`); do not edit by hand. -->\n\n\
         The daemon reads `/etc/imagegate/imagegate.toml` (`imagegate daemon --config FILE`). \
         Every key is optional and defaults to the value below; unknown keys and invalid values \
         are errors naming the file, line and key, and the daemon refuses to start on them. \
         `imagegate config check FILE` checks a file, and the policy file it names, without \
         starting anything (exit 0 when both load, 2 otherwise).\n\n\
         | key | type | default | meaning |\n|---|---|---|---|\n",
    );
    for setting in SETTINGS {
        let default = if setting.default.is_empty() {
            "unset".to_owned()
        } else {
            format!("`{}`", setting.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            setting.key, setting.kind, default, setting.doc
        ));
    }
    out.push_str("\nThe same settings with their defaults, as a file:\n\n```toml\n");
    out.push_str(&defaults_toml());
    out.push_str("```\n");
    out
}

/// Every setting at its default, as TOML (unset optional settings commented out).
#[must_use]
pub fn defaults_toml() -> String {
    let mut out = String::new();
    let mut table = "";
    for setting in SETTINGS {
        let (section, key) = setting.key.rsplit_once('.').unwrap_or(("", setting.key));
        if section != table {
            out.push_str(&format!("\n[{section}]\n"));
            table = section;
        }
        if setting.default.is_empty() {
            out.push_str(&format!("# {key} = ...\n"));
        } else {
            out.push_str(&format!("{key} = {}\n", setting.default));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_fail_closed_defaults() {
        let config = Config::parse(Path::new("c.toml"), "").expect("empty config");
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.drift, Drift::Deny);
        assert_eq!(config.backend, BackendChoice::Auto);
        assert_eq!(
            config.containerd.snapshots_dir(),
            Path::new("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots")
        );
    }

    #[test]
    fn settings_are_read() {
        let config = Config::parse(
            Path::new("c.toml"),
            "mode = \"audit\"\ndrift = \"allow\"\nbackend = \"fanotify\"\n\
             [containerd]\nsocket = \"/tmp/c.sock\"\n[registry]\ninsecure = [\"127.0.0.1:5000\"]\n",
        )
        .expect("config");
        assert_eq!(config.mode, Mode::Audit);
        assert_eq!(config.drift, Drift::Allow);
        assert_eq!(config.backend, BackendChoice::Fanotify);
        assert_eq!(config.containerd.socket, Path::new("/tmp/c.sock"));
        assert_eq!(config.registry.insecure, ["127.0.0.1:5000"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_file_and_line() {
        let error = Config::parse(
            Path::new("/etc/x.toml"),
            "mode = \"enforce\"\nmdoe = \"audit\"\n",
        )
        .expect_err("typo must fail");
        let message = error.to_string();
        assert!(
            message.starts_with("/etc/x.toml:2: mdoe: unknown field `mdoe`"),
            "{message}"
        );
        let error = Config::parse(Path::new("c.toml"), "mode = \"off\"\n").expect_err("bad mode");
        assert!(error.to_string().starts_with("c.toml:1: mode: "), "{error}");
        let error = Config::parse(
            Path::new("c.toml"),
            "mode = \"audit\"\n[registry]\ntimeout_seconds = \"ten\"\n",
        )
        .expect_err("bad type");
        assert!(
            error
                .to_string()
                .starts_with("c.toml:3: registry.timeout_seconds: "),
            "{error}"
        );
    }

    #[test]
    fn the_packaged_config_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/imagegate.toml");
        let packaged = Config::load(&path).expect("packaged config parses");
        assert_eq!(
            packaged,
            Config::default(),
            "the packaged file must show the defaults"
        );
    }

    #[test]
    fn unusable_values_are_errors_at_their_line() {
        let error = Config::parse(
            Path::new("c.toml"),
            "mode = \"audit\"\nmetrics_listen = \"relative/path\"\n",
        )
        .expect_err("relative socket path");
        assert!(
            error.to_string().starts_with("c.toml:2: metrics_listen: "),
            "{error}"
        );
        let error =
            Config::parse(Path::new("c.toml"), "log_level = \"info,[\"\n").expect_err("bad filter");
        assert!(
            error.to_string().starts_with("c.toml:1: log_level: "),
            "{error}"
        );
        let error = Config::parse(
            Path::new("c.toml"),
            "[tuf]\nmirror_dir = \"/m\"\nrepository = \"ftp://mirror.example/\"\n",
        )
        .expect_err("ftp repository");
        assert!(
            error.to_string().starts_with("c.toml:3: tuf.repository: "),
            "{error}"
        );
        let error = Config::parse(Path::new("c.toml"), "[tuf]\nrefresh_interval_seconds = 5\n")
            .expect_err("refresh every 5 s");
        assert!(
            error
                .to_string()
                .starts_with("c.toml:2: tuf.refresh_interval_seconds: at least 60"),
            "{error}"
        );
        for listen in ["off", "127.0.0.1:9464", "[::1]:9464", "/run/x/metrics.sock"] {
            Config::parse(
                Path::new("c.toml"),
                &format!("metrics_listen = \"{listen}\"\n"),
            )
            .unwrap_or_else(|e| panic!("{listen}: {e}"));
        }
    }

    /// Leaf keys of a serialized value, dotted (`containerd.socket`).
    fn leaf_keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    if value.is_object() {
                        leaf_keys(value, &path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    #[test]
    fn settings_table_names_every_field_exactly_once() {
        let value = serde_json::to_value(Config::default()).expect("serializable");
        let mut fields = Vec::new();
        leaf_keys(&value, "", &mut fields);
        fields.sort();
        let mut listed: Vec<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
        listed.sort();
        assert_eq!(
            fields, listed,
            "config.rs SETTINGS must list every Config field once (and nothing else)"
        );
    }

    #[test]
    fn settings_table_defaults_are_the_code_defaults() {
        let text = defaults_toml();
        let parsed = Config::parse(Path::new("defaults"), &text).expect("defaults parse");
        assert_eq!(parsed, Config::default(), "SETTINGS defaults:\n{text}");
        // Setting by setting too, so a mismatch names the setting.
        for setting in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
            let (section, key) = setting.key.rsplit_once('.').unwrap_or(("", setting.key));
            let single = if section.is_empty() {
                format!("{key} = {}\n", setting.default)
            } else {
                format!("[{section}]\n{key} = {}\n", setting.default)
            };
            assert_eq!(
                Config::parse(Path::new("one"), &single).expect("one setting"),
                Config::default(),
                "{}",
                setting.key
            );
        }
    }

    #[test]
    fn the_packaged_config_mentions_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/imagegate.toml");
        let text = std::fs::read_to_string(path).expect("packaged config");
        for setting in SETTINGS {
            let key = setting.key.rsplit('.').next().unwrap_or(setting.key);
            assert!(
                text.lines().any(|line| line
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))),
                "packaging/config/imagegate.toml does not show `{}`",
                setting.key
            );
        }
    }

    #[test]
    fn docs_config_md_is_generated_from_the_settings_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == reference_markdown(),
            "docs/config.md is out of date with daemon/src/config.rs SETTINGS: run `cargo xtask docs` \
             (or `imagegate config reference > docs/config.md`) and commit the result"
        );
    }
}
