//! containerd releases under test: Debian's containerd of another suite (trixie's 1.7, sid's
//! 2.1), fetched with `apt-get download` through a private apt configuration under
//! `target/containerd/apt/<suite>/` (its own sources list naming the suite, lists, cache and an
//! empty dpkg status: the system's apt sources and state are never read nor changed) and
//! unpacked with `dpkg -x` under `target/containerd/<suite>/`. Never installed: the tests run
//! its `usr/bin` (`containerd`, `ctr`, `containerd-shim-runc-v2`) through
//! `IMAGEGATE_CONTAINERD_BIN_DIR` (daemon/tests/support/containerd.rs), with the system's runc.
//! Cached: once unpacked, a release is used as it is, without apt (delete its directory to fetch
//! the suite's current version again).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::setup::{output, run_command, workspace_root};

/// Where Debian's archive is reached (as the system's own sources do).
const MIRROR: &str = "http://deb.debian.org/debian";

/// The key ring holding Debian's archive signing keys (`debian-archive-keyring`): its trixie
/// keys sign trixie's and sid's `InRelease`.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A containerd release the suites run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Release {
    /// The system's containerd (Debian 12, bookworm: 1.6.20), from `PATH`.
    #[value(name = "1.6")]
    V1_6,
    /// Debian 13 (trixie): 1.7.x.
    #[value(name = "1.7")]
    V1_7,
    /// Debian unstable (sid): 2.1.x.
    #[value(name = "2.1")]
    V2_1,
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V1_6 => "1.6",
            Self::V1_7 => "1.7",
            Self::V2_1 => "2.1",
        })
    }
}

impl Release {
    /// The Debian suite shipping it; `None` for the system's.
    pub fn suite(self) -> Option<&'static str> {
        match self {
            Self::V1_6 => None,
            Self::V1_7 => Some("trixie"),
            Self::V2_1 => Some("sid"),
        }
    }
}

/// The test suites (daemon/tests/*.rs) that drive a real containerd, run again for each
/// release beyond the system's: the end-to-end suites (real containers under the fanotify
/// backend, signed images from a registry, restarts and load, Kubernetes' CRI path driven as
/// kubelet drives it), the catalog and its image records, the daemon's bookkeeping from
/// containerd's events, and the pull-time verifier (containerd 2.x's image verifier hook, for
/// `ctr` pulls here and CRI pulls in `e2e_cri`; those tests skip on 1.x, which has none).
pub const SUITES: &[&str] = &[
    "e2e_cri",
    "e2e_fanotify",
    "e2e_signed",
    "e2e_rekor_v2",
    "e2e_lifecycle",
    "catalog",
    "catalog_records",
    "daemon_reconcile",
    "containerd_verifier",
];

/// The directory holding `release`'s `containerd`, `ctr` and `containerd-shim-runc-v2`
/// (fetched and unpacked first if need be); `None` for the system's release.
pub fn bin_dir(release: Release) -> Result<Option<PathBuf>> {
    let Some(suite) = release.suite() else {
        return Ok(None);
    };
    let root = workspace_root().join("target/containerd");
    let unpacked = root.join(suite);
    let bin = unpacked.join("usr/bin");
    let stamp = unpacked.join("VERSION");
    if !(bin.join("containerd").is_file() && stamp.is_file()) {
        fetch(suite, &root.join("apt").join(suite), &unpacked)?;
    }
    let version = std::fs::read_to_string(&stamp)?;
    let reported = output(Command::new(bin.join("containerd")).arg("--version"))
        .with_context(|| format!("running {}/containerd", bin.display()))?;
    println!(
        "xtask: containerd {release} from Debian {suite} ({}): {}",
        version.trim(),
        reported.trim()
    );
    if !version.starts_with(&format!("{release}.")) {
        eprintln!(
            "xtask: warning: Debian {suite} now ships containerd {} (not {release}.x); testing it",
            version.trim()
        );
    }
    Ok(Some(bin))
}

/// The private apt configuration of `suite` rooted at `apt`: every directory apt reads or
/// writes is there (the system's `apt.conf.d` still applies, for proxies and the like).
fn apt_options(apt: &Path) -> Vec<String> {
    [
        ("Dir::Etc::SourceList", apt.join("sources.list")),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State", apt.to_path_buf()),
        ("Dir::State::Lists", apt.join("lists")),
        ("Dir::State::status", apt.join("status")),
        ("Dir::Cache", apt.join("cache")),
        ("Dir::Cache::archives", apt.join("cache/archives")),
    ]
    .into_iter()
    .map(|(key, path)| format!("{key}={}", path.display()))
    .chain([
        // Files under target/ belong to root: apt's `_apt` sandbox user could not write them.
        "APT::Sandbox::User=root".to_owned(),
        "APT::Architecture=amd64".to_owned(),
    ])
    .flat_map(|option| ["-o".to_owned(), option])
    .collect()
}

/// `apt-get update` and `apt-get download containerd` of `suite` through the configuration in
/// `apt`, then `dpkg -x` into `unpacked` (made aside and renamed into place, so an interrupted
/// run leaves no half-unpacked release).
fn fetch(suite: &str, apt: &Path, unpacked: &Path) -> Result<()> {
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing (apt-get install debian-archive-keyring)");
    }
    for dir in ["lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(apt.join(dir))?;
    }
    std::fs::write(
        apt.join("sources.list"),
        format!("deb [signed-by={KEYRING} target=Packages arch=amd64] {MIRROR} {suite} main\n"),
    )?;
    std::fs::write(apt.join("status"), "")?;
    let options = apt_options(apt);
    println!(
        "xtask: fetching containerd from Debian {suite} (private apt configuration in {})",
        apt.display()
    );
    run_command(
        Command::new("apt-get")
            .args(&options)
            .args(["-q", "update"]),
    )?;
    let debs = apt.join("debs");
    for old in std::fs::read_dir(&debs)? {
        std::fs::remove_file(old?.path())?;
    }
    run_command(
        Command::new("apt-get")
            .args(&options)
            .args(["-q", "download", "containerd"])
            .current_dir(&debs),
    )?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no .deb")?;
    let version = output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )?;
    let partial = unpacked.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    run_command(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
    if !partial.join("usr/bin/containerd").is_file() {
        bail!("{} holds no usr/bin/containerd", deb.display());
    }
    std::fs::write(partial.join("VERSION"), version.trim())?;
    let _ = std::fs::remove_dir_all(unpacked);
    std::fs::rename(&partial, unpacked)?;
    Ok(())
}

/// Runs the containerd suites ([`SUITES`]) against `release`; (passed, failed).
pub fn test(release: Release) -> Result<(u64, u64)> {
    let bin = bin_dir(release)?;
    let mut args = vec!["test", "-p", "imagegate"];
    for suite in SUITES {
        args.extend(["--test", suite]);
    }
    let dir = bin
        .as_ref()
        .map(|bin| bin.to_str().context("non-UTF-8 path"))
        .transpose()?
        .unwrap_or("");
    println!("xtask: containerd {release}: {}", SUITES.join(", "));
    crate::setup::cargo_test_with_env(&args, &[("IMAGEGATE_CONTAINERD_BIN_DIR", dir)])
}
