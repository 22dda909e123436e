//! A private containerd: its own root, state and socket under `target/`, never the system's.
//!
//! Which containerd: the system's (`containerd`, `ctr` and `containerd-shim-runc-v2` from `PATH`,
//! Debian 12's 1.6), or the release unpacked under `target/containerd/` (`cargo xtask test
//! --containerd 1.7|2.1`) when `IMAGEGATE_CONTAINERD_BIN_DIR` names its `usr/bin`: containerd and
//! `ctr` are run from there, and that directory comes first in containerd's `PATH` so that its
//! shim is the release's own (runc stays the system's). containerd 2.x gets a version 3 config,
//! its CRI section too ([`super::cri::config`]).
//! Started and stopped by pid; its mounts are cleaned up on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub struct PrivateContainerd {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Where root and state live (the tmpfs for `start_on_tmpfs`).
    pub data: PathBuf,
}

/// `dir/data` on a fresh tmpfs: containerd's root and state, which an enforcing fanotify backend
/// may mark as a whole file system.
fn private_tmpfs(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    nix::mount::mount(
        Some("tmpfs"),
        &data,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0711"),
    )
    .expect("mount tmpfs for containerd");
    data
}

impl PrivateContainerd {
    /// Starts containerd with root and state on a fresh tmpfs under `dir`, so that fanotify
    /// filesystem marks on the snapshotter root cover only that tmpfs, never the host's disk.
    pub fn start_on_tmpfs(dir: &Path) -> Self {
        Self::start_with_data(dir, &private_tmpfs(dir))
    }

    pub fn start(dir: &Path) -> Self {
        Self::start_with_data(dir, dir)
    }

    pub fn start_with_data(dir: &Path, data: &Path) -> Self {
        Self::start_with_config(dir, data, None)
    }

    /// Starts containerd with its CRI plugin configured by `cri` (a config section written by
    /// `support::cri`), root and state on a fresh tmpfs under `dir` as [`Self::start_on_tmpfs`].
    pub fn start_cri_on_tmpfs(dir: &Path, cri: &str) -> Self {
        Self::start_with_config(dir, &private_tmpfs(dir), Some(cri))
    }

    /// Starts containerd with root, state and sockets under `dir`/`data` and the release's own
    /// configuration ([`config_toml`]): CRI disabled, or with `cri`, enabled and configured by
    /// that section (written by `support::cri` for this release).
    fn start_with_config(dir: &Path, data: &Path, cri: Option<&str>) -> Self {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let text = config_toml(dir, data, &socket, cri);
        std::fs::write(&config, text).expect("write containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = containerd_command()
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let me = Self {
            child,
            dir: dir.to_owned(),
            socket,
            data: data.to_owned(),
        };
        // The socket appears before the services answer.
        while !me.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd does not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// The overlayfs snapshotter's `snapshots` directory.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root_dir()
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots")
    }

    /// Runs `ctr` against this containerd in namespace `default`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in("default", args)
    }

    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        ctr_command()
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr run --rm IMAGE ID ARGS...`; a failed start can leave the container record behind,
    /// so it is removed too.
    pub fn run(&self, image: &str, id: &str, args: &[&str]) -> Output {
        let mut command = vec!["run", "--rm", image, id];
        command.extend_from_slice(args);
        let out = self.ctr(&command);
        let _ = self.ctr(&["containers", "rm", id]);
        out
    }

    /// `ctr run --rm OPTIONS... IMAGE ID ARGS...` (e.g. `--readonly`, `--mount ...`).
    pub fn run_with(&self, options: &[&str], image: &str, id: &str, args: &[&str]) -> Output {
        let mut command = vec!["run", "--rm"];
        command.extend_from_slice(options);
        command.extend_from_slice(&[image, id]);
        command.extend_from_slice(args);
        let out = self.ctr(&command);
        let _ = self.ctr(&["containers", "rm", id]);
        out
    }

    /// containerd's root directory.
    pub fn root_dir(&self) -> PathBuf {
        self.data.join("root")
    }

    /// [`Self::run`] of one container per id, all from `image` and started at once.
    pub fn run_together(&self, image: &str, ids: &[&str]) -> Vec<Output> {
        std::thread::scope(|scope| {
            let runs: Vec<_> = ids
                .iter()
                .map(|id| scope.spawn(move || self.run(image, id, &[])))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("ctr run thread"))
                .collect()
        })
    }

    /// `ctr images import` of an OCI archive, asserting success.
    pub fn import(&self, namespace: &str, archive: &Path) {
        let out = self.ctr_in(
            namespace,
            &["images", "import", archive.to_str().expect("utf-8 path")],
        );
        assert!(
            out.status.success(),
            "ctr images import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Pids of the shims serving the containerd at `socket` (their `-address` argument).
fn shims_of(socket: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|arg0| arg0.ends_with(b"containerd-shim-runc-v2"))
                    && args.windows(2).any(|w| {
                        w[0] == b"-address" && w[1] == socket.as_os_str().as_encoded_bytes()
                    })
            })
        })
        .collect()
}

/// Kills (SIGKILL, by pid) the shims of the containerd at `socket` and their direct children
/// (the containers' first processes): what a test that failed midway left running, since
/// shims outlive containerd by design.
fn kill_shims(socket: &Path) {
    for shim in shims_of(socket) {
        let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children"))
            .unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        kill_shims(&self.socket);
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Anything containerd left mounted under our directory.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let ours: Vec<&str> = mounts
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter(|target| target.starts_with(self.dir.to_str().unwrap_or("//")))
                .collect();
            for target in ours.into_iter().rev() {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = nix::mount::umount2(&self.data, nix::mount::MntFlags::MNT_DETACH);
        }
        if !std::thread::panicking() {
            // Keep the directory (and containerd.log) of a failed test for a post-mortem.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory holding the containerd release under test (`IMAGEGATE_CONTAINERD_BIN_DIR`),
/// `None` for the system's containerd on `PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    std::env::var_os("IMAGEGATE_CONTAINERD_BIN_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// `name` from the release under test, else from `PATH`.
fn program(name: &str) -> PathBuf {
    bin_dir().map_or_else(|| PathBuf::from(name), |dir| dir.join(name))
}

/// A command running `containerd` of the release under test, with that release's directory
/// first in its `PATH` (containerd finds `containerd-shim-runc-v2` there).
pub fn containerd_command() -> Command {
    let mut command = Command::new(program("containerd"));
    if let Some(dir) = bin_dir() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))
            .expect("PATH");
        command.env("PATH", joined);
    }
    command
}

/// A command running `ctr` of the release under test (callers add `--address`).
pub fn ctr_command() -> Command {
    Command::new(program("ctr"))
}

/// The major version of the containerd under test, from `containerd --version`
/// (`containerd github.com/containerd/containerd/v2 2.1.9+unknown ...`).
pub fn major_version() -> u32 {
    static MAJOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = containerd_command()
            .arg("--version")
            .output()
            .expect("containerd --version (apt-get install containerd)");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)
            .and_then(|version| version.split('.').next())
            .and_then(|major| major.trim_start_matches('v').parse().ok())
            .unwrap_or_else(|| panic!("unreadable containerd version: {text}"))
    })
}

/// The configuration of a private containerd: root and state under `data`, its sockets in
/// `dir`, and `cri`, the CRI plugin's sections (`support::cri::config`), or CRI disabled without
/// them. containerd 2.x reads version 3 (its CRI plugin is three: `io.containerd.grpc.v1.cri`
/// and `io.containerd.cri.v1.{images,runtime}`), and gets its NRI plugin disabled (it would
/// listen on `/var/run/nri/nri.sock`, shared by every instance) and its image verifier directory
/// inside `dir` (`image-verifiers/`, empty unless a test puts a verifier there: the system's
/// `/opt/containerd/image-verifier/bin` never applies).
pub fn config_toml(dir: &Path, data: &Path, socket: &Path, cri: Option<&str>) -> String {
    let common = format!(
        "root = \"{root}\"\nstate = \"{state}\"\n",
        root = data.join("root").display(),
        state = data.join("state").display(),
    );
    let sockets = format!(
        "[grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n",
        socket = socket.display(),
    );
    let cri_section = cri.unwrap_or_default();
    if major_version() >= 2 {
        let disabled = if cri.is_some() {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \
             \"io.containerd.cri.v1.runtime\", "
        };
        format!(
            "version = 3\n{common}\
             disabled_plugins = [{disabled}\"io.containerd.nri.v1.nri\"]\n{sockets}\
             [plugins.\"io.containerd.image-verifier.v1.bindir\"]\n  bin_dir = \"{verifiers}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n{cri_section}",
            verifiers = dir.join("image-verifiers").display(),
            opt = data.join("opt").display(),
        )
    } else {
        let disabled = if cri.is_some() {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        format!("version = 2\n{common}{disabled}{sockets}{cri_section}")
    }
}
