//! A private containerd: its own root, state and socket under `target/`, never the system's.
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

    fn start_with_data(dir: &Path, data: &Path) -> Self {
        Self::start_with_config(
            dir,
            data,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        )
    }

    /// Starts containerd with its CRI plugin configured by `cri` (a config section written by
    /// `support::cri`), root and state on a fresh tmpfs under `dir` as [`Self::start_on_tmpfs`].
    pub fn start_cri_on_tmpfs(dir: &Path, cri: &str) -> Self {
        Self::start_with_config(dir, &private_tmpfs(dir), cri)
    }

    /// Starts containerd with `version = 2`, root, state and sockets under `dir`/`data`, and
    /// `extra` appended (plugin sections; top-level keys must come first in it).
    fn start_with_config(dir: &Path, data: &Path, extra: &str) -> Self {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n{extra}\
                 [grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n",
                root = data.join("root").display(),
                state = data.join("state").display(),
                socket = socket.display(),
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
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
        Command::new("ctr")
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
