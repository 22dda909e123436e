//! The daemon's configuration file (TOML, `/etc/imagegate/imagegate.toml`). Strict: an unknown
//! key is an error, because a mistyped setting in a security daemon must not be ignored. Every
//! setting has a default, chosen to fail closed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::enforce::{Drift, Mode};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/imagegate/imagegate.toml";

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
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

/// The configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `enforce` (deny) or `audit` (report, allow). Default: enforce.
    pub mode: Mode,
    /// Exec from a container's writable layer: `deny` or `allow`. Default: deny.
    pub drift: Drift,
    /// `auto`, `bpf-lsm` or `fanotify`. Default: auto.
    pub backend: BackendChoice,
    /// The policy file (TOML, or containers-policy.json by extension).
    pub policy: PathBuf,
    /// Where verdicts persist.
    pub state_dir: PathBuf,
    /// Decision events are also appended here as JSON lines (stdout always gets them).
    pub event_log: Option<PathBuf>,
    /// Unix socket that `imagegate status` reads.
    pub status_socket: PathBuf,
    /// BPF pin directory.
    pub pin_dir: PathBuf,
    /// containerd.
    pub containerd: ContainerdConfig,
    /// Registries.
    pub registry: RegistryConfig,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            drift: Drift::Deny,
            backend: BackendChoice::Auto,
            policy: PathBuf::from("/etc/imagegate/policy.toml"),
            state_dir: PathBuf::from("/var/lib/imagegate"),
            event_log: None,
            status_socket: PathBuf::from("/run/imagegate/status.sock"),
            pin_dir: PathBuf::from(imagegate_common::PIN_DIR),
            containerd: ContainerdConfig::default(),
            registry: RegistryConfig::default(),
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

    /// Parses configuration text; errors name the file, line and key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml_parse(text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }
}

fn toml_parse(text: &str) -> Result<Config, String> {
    let deserializer = toml::Deserializer::new(text);
    Config::deserialize(deserializer).map_err(|error| {
        let line = error
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(line) => format!("line {line}: {}", error.message()),
            None => error.message().to_owned(),
        }
    })
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
            message.contains("/etc/x.toml")
                && message.contains("line 2")
                && message.contains("mdoe"),
            "{message}"
        );
        let error = Config::parse(Path::new("c.toml"), "mode = \"off\"\n").expect_err("bad mode");
        assert!(error.to_string().contains("line 1"), "{error}");
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
}
