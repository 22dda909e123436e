//! `cargo xtask demo`: the product end to end on this machine, with nothing borrowed from the
//! host's container setup. A private containerd (root and state on a tmpfs under `target/demo/`),
//! Debian's docker-registry on 127.0.0.1, five images signed (or not) here with fresh keys in
//! cosign's legacy format, `imagegate daemon` in enforce mode with a demo policy, and `ctr run`
//! of each image; then a summary of what ran, what was denied and the daemon's decision events.
//! Everything started is stopped by pid and every mount under `target/demo/` is unmounted, also
//! when a step fails (and leftovers of an interrupted run are cleaned at the next start).

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use imagegate_testkit::{
    image::{self, File, Image},
    registry::{self, LocalRegistry},
    sign::{self, Key},
};
use serde_json::Value;

use crate::setup;

/// One demo image: what it is made of, who signed it, what running it should show.
struct DemoImage {
    /// Repository under the registry, e.g. `demo/signed`.
    repo: &'static str,
    image: Image,
    signer: Signer,
    /// What the demo says about it.
    story: &'static str,
    /// Extra runs besides the entrypoint: (label, command).
    extra_runs: Vec<(&'static str, Vec<&'static str>)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Signer {
    DemoKey,
    UntrustedKey,
    Nobody,
}

/// What the demo started; [`Drop`] stops it all, so an error anywhere leaves nothing behind.
struct Running {
    dir: PathBuf,
    tmpfs: PathBuf,
    daemon: Option<Child>,
    registry: Option<LocalRegistry>,
    containerd: Option<Child>,
}

pub fn run() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("cargo xtask demo needs root (containerd, runc, fanotify, mounts): run it with sudo");
    }
    setup::run()?;
    setup::cargo(&["build", "-p", "imagegate"])?;
    catch_interrupts()?;
    let imagegate = target_dir().join("debug/imagegate");
    let dir = setup::workspace_root().join("target/demo");
    clean_leftovers(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mut running = Running {
        tmpfs: dir.join("containerd"),
        dir,
        daemon: None,
        registry: None,
        containerd: None,
    };
    let result = demo(&mut running, &imagegate);
    running.stop();
    let leftovers = processes_under(&running.dir);
    if !leftovers.is_empty() {
        eprintln!("xtask: demo: processes still running after the stop: {leftovers:?}");
    }
    result
}

fn demo(running: &mut Running, imagegate: &Path) -> Result<()> {
    let dir = running.dir.clone();
    step("starting a private containerd (root and state on a tmpfs under target/demo)")?;
    let socket = start_containerd(running)?;
    step("starting docker-registry on 127.0.0.1")?;
    let registry =
        LocalRegistry::start(&dir.join("registry")).context("starting docker-registry")?;
    let addr = registry.addr.clone();
    running.registry = Some(registry);

    step("building, pushing and signing the demo images")?;
    let demo_key = Key::generate()?;
    let untrusted_key = Key::generate()?;
    std::fs::write(dir.join("demo-key.pub"), demo_key.public_pem()?)?;
    std::fs::write(dir.join("untrusted-key.pub"), untrusted_key.public_pem()?)?;
    let images = demo_images()?;
    let client = registry::Client::new(&addr)?;
    for img in &images {
        let digest = client
            .push_image(img.repo, "v1", &img.image)
            .with_context(|| format!("pushing {}", img.repo))?;
        match img.signer {
            Signer::DemoKey => {
                sign::sign_legacy(&client, &demo_key, &addr, img.repo, &digest)?;
            }
            Signer::UntrustedKey => {
                sign::sign_legacy(&client, &untrusted_key, &addr, img.repo, &digest)?;
            }
            Signer::Nobody => {}
        }
    }

    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "# cargo xtask demo: the demo registry's images must be signed by the demo key.\n\
             version = 1\n\n[default]\nrequire = \"reject\"\n\n[[scope]]\n\
             match = \"{addr}/demo/**\"\nrequire = \"signatures\"\n[[scope.keys]]\n\
             name = \"demo-key\"\npath = \"{key}\"\n",
            key = dir.join("demo-key.pub").display()
        ),
    )?;
    let config = dir.join("imagegate.toml");
    std::fs::write(
        &config,
        format!(
            "mode = \"enforce\"\ndrift = \"deny\"\nbackend = \"auto\"\npolicy = \"{policy}\"\n\
             state_dir = \"{state}\"\nevent_log = \"{events}\"\nstatus_socket = \"{status}\"\n\n\
             [containerd]\nsocket = \"{socket}\"\nroot = \"{root}\"\n\n\
             [registry]\ninsecure = [\"{addr}\"]\n",
            policy = policy.display(),
            state = dir.join("imagegate-state").display(),
            events = dir.join("events.jsonl").display(),
            status = dir.join("status.sock").display(),
            socket = socket.display(),
            root = running.tmpfs.join("root").display(),
        ),
    )?;

    step("starting imagegate daemon (enforce mode)")?;
    let log = dir.join("imagegate.log");
    running.daemon = Some(
        Command::new(imagegate)
            .process_group(0)
            .args(["daemon", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(dir.join("imagegate.stdout"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting imagegate daemon")?,
    );
    let status_socket = dir.join("status.sock");
    wait_for(
        Duration::from_secs(30),
        "the daemon's status socket",
        || status(imagegate, &status_socket).is_some(),
    )
    .with_context(|| daemon_log(&log))?;

    step("pulling the images into the private containerd (ctr images pull --plain-http)")?;
    let reference = |img: &DemoImage| format!("{addr}/{}:v1", img.repo);
    for img in &images {
        let out = ctr(
            &socket,
            &["images", "pull", "--plain-http", &reference(img)],
        )?;
        if !out.status.success() {
            bail!(
                "ctr images pull {} failed: {}",
                reference(img),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    step("waiting for the daemon's verdicts (imagegate status)")?;
    let mut verdicts = Vec::new();
    wait_for(Duration::from_secs(60), "verdicts for every image", || {
        verdicts = images
            .iter()
            .map(|img| verdict_of(imagegate, &status_socket, &reference(img)))
            .collect();
        verdicts.iter().all(Option::is_some)
    })
    .with_context(|| daemon_log(&log))?;
    let backend = status(imagegate, &status_socket)
        .and_then(|s| s["backend"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());

    step("running each image with ctr run --rm")?;
    let events_path = dir.join("events.jsonl");
    let mut summary = String::new();
    summary.push_str(&format!(
        "\n================ imagegate demo: summary ================\n\
         backend: {backend}   mode: enforce   registry: {addr}\n\
         policy:  {addr}/demo/** must be signed by demo-key (fresh ECDSA P-256, cosign legacy .sig);\n\
         \x20        everything else is rejected\n"
    ));
    for (index, (img, verdict)) in images.iter().zip(&verdicts).enumerate() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted; stopping what the demo started");
        }
        let name = reference(img);
        let digest = img.image.manifest_digest();
        let verdict = verdict.clone().unwrap_or(Value::Null);
        summary.push_str(&format!(
            "\n{}  {}\n  {}\n  digest:  {digest}\n  signed:  {}\n  verdict: {}{}\n",
            index + 1,
            img.repo,
            img.story,
            match img.signer {
                Signer::DemoKey => "by demo-key (trusted by the policy)",
                Signer::UntrustedKey => "by untrusted-key (valid signature, key not in the policy)",
                Signer::Nobody => "no",
            },
            verdict["outcome"].as_str().unwrap_or("?"),
            why(imagegate, &policy, &addr, &name),
        ));
        let mut runs = vec![("entrypoint", Vec::new())];
        runs.extend(img.extra_runs.iter().cloned());
        for (run_index, (label, args)) in runs.iter().enumerate() {
            let id = format!("demo-{index}-{run_index}");
            let shown = if args.is_empty() {
                entrypoint(&img.image)
            } else {
                args.join(" ")
            };
            let out = ctr_run(&socket, &name, &id, args)?;
            let outcome = if out.status.success() {
                format!(
                    "RAN, printed {:?}",
                    String::from_utf8_lossy(&out.stdout).trim()
                )
            } else {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let denied = stderr.to_lowercase().contains("operation not permitted");
                format!(
                    "{}: {}",
                    if denied { "DENIED" } else { "FAILED" },
                    stderr.trim().lines().last().unwrap_or("").trim()
                )
            };
            summary.push_str(&format!("  run ({label}): {shown}\n    -> {outcome}\n"));
        }
        // Denials are logged as they happen; give the writer a moment.
        let mut matching = Vec::new();
        let expect_events = img.signer != Signer::DemoKey;
        let _ = wait_for(
            Duration::from_secs(if expect_events { 5 } else { 0 }),
            "events",
            || {
                matching = events_for(&events_path, &name);
                !matching.is_empty()
            },
        );
        if matching.is_empty() {
            summary.push_str("  events:  none (nothing denied)\n");
        } else {
            summary.push_str("  events:\n");
            for event in matching {
                summary.push_str(&format!("    {}\n", describe_event(&event)));
            }
        }
    }
    summary.push_str(&format!(
        "\nfiles: {} (policy.toml, imagegate.toml, events.jsonl, imagegate.log, summary.txt)\n\
         =========================================================\n",
        dir.display()
    ));
    println!("{summary}");
    std::fs::write(dir.join("summary.txt"), &summary)?;
    eprintln!("xtask demo: stopping the daemon, the registry and containerd; unmounting the tmpfs");
    Ok(())
}

fn demo_images() -> Result<Vec<DemoImage>> {
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let base = image::layer(&[File::new("bin/busybox", busybox.clone(), 0o755)])?;
    // The unsigned and untrusted-key images get layers of their own, so their denials do not
    // rest on sharing; the mixed and config-only images share demo/signed's layer on purpose:
    // a container is judged by its image, so shared signed files do not run in them either.
    let own_layer = |marker: &str| {
        image::layer(&[
            File::new("bin/busybox", busybox.clone(), 0o755),
            File::new(&format!("etc/{marker}"), marker, 0o644),
        ])
    };
    let base_for_config = base.clone();
    Ok(vec![
        DemoImage {
            repo: "demo/signed",
            image: image::image(vec![base.clone()], &["/bin/busybox", "echo", "hello from demo/signed"]),
            signer: Signer::DemoKey,
            story: "busybox, signed with the demo key: should run",
            extra_runs: vec![],
        },
        DemoImage {
            repo: "demo/unsigned",
            image: image::image(vec![own_layer("unsigned")?], &["/bin/busybox", "echo", "hello from demo/unsigned"]),
            signer: Signer::Nobody,
            story: "busybox, never signed: its entrypoint must not execute",
            extra_runs: vec![],
        },
        DemoImage {
            repo: "demo/untrusted-key",
            image: image::image(
                vec![own_layer("untrusted-key")?],
                &["/bin/busybox", "echo", "hello from demo/untrusted-key"],
            ),
            signer: Signer::UntrustedKey,
            story: "busybox, signed correctly but by a key the policy does not trust: must not execute",
            extra_runs: vec![],
        },
        DemoImage {
            repo: "demo/mixed",
            // The signed image's layer, plus a top layer adding its own binary; the image itself
            // is not signed. This is "FROM a signed base, add a layer": the base's signature
            // does not extend to the new layer.
            image: image::image(
                vec![base, image::layer(&[File::new("usr/local/bin/busybox", busybox, 0o755)])?],
                &["/usr/local/bin/busybox", "echo", "hello from the unsigned top layer"],
            ),
            signer: Signer::Nobody,
            story: "demo/signed's layer + an unsigned top layer with its own binary (image unsigned):\n  \
                    its container runs nothing: not the top layer's binary, and not the signed\n  \
                    base's either (a container is trusted by its image, not file by file)",
            extra_runs: vec![(
                "binary from the signed base layer",
                vec!["/bin/busybox", "echo", "the signed base layer ran"],
            )],
        },
        DemoImage {
            repo: "demo/config-only",
            // Byte for byte demo/signed's layer, with another command: a new config, so a new
            // manifest digest that nobody signed.
            image: image::image(
                vec![base_for_config],
                &["/bin/busybox", "sh", "-c", "echo tampered command ran"],
            ),
            signer: Signer::Nobody,
            story: "demo/signed's layer unchanged, only the image config's command changed (unsigned):\n  \
                    must not execute, although every file in it is a signed one",
            extra_runs: vec![],
        },
    ])
}

/// Set by SIGINT/SIGTERM: the demo then stops at the next step and tears down as on an error.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: std::os::raw::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C must not kill the demo before it has stopped what it started and unmounted its
/// tmpfs; the long-lived children run in their own process groups so the terminal's SIGINT
/// reaches only the demo, which stops them in order.
fn catch_interrupts() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn step(what: &str) -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; stopping what the demo started");
    }
    eprintln!("xtask demo: {what}");
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| setup::workspace_root().join("target"))
}

/// Mounts the tmpfs and starts containerd on it; returns its socket.
fn start_containerd(running: &mut Running) -> Result<PathBuf> {
    let dir = &running.dir;
    std::fs::create_dir_all(&running.tmpfs)?;
    nix::mount::mount(
        Some("tmpfs"),
        &running.tmpfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0711"),
    )
    .context("mounting the demo's tmpfs")?;
    let socket = dir.join("containerd.sock");
    let config = dir.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n",
            root = running.tmpfs.join("root").display(),
            state = running.tmpfs.join("state").display(),
            socket = socket.display(),
        ),
    )?;
    running.containerd = Some(
        Command::new("containerd")
            .process_group(0)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log"))?)
            .spawn()
            .context("starting containerd")?,
    );
    wait_for(Duration::from_secs(20), "containerd to answer", || {
        socket.exists() && ctr(&socket, &["version"]).is_ok_and(|out| out.status.success())
    })?;
    Ok(socket)
}

fn ctr(socket: &Path, args: &[&str]) -> Result<Output> {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "default"])
        .args(args)
        .output()
        .context("running ctr")
}

fn ctr_run(socket: &Path, image: &str, id: &str, args: &[&str]) -> Result<Output> {
    let mut command = vec!["run", "--rm", image, id];
    command.extend_from_slice(args);
    let out = ctr(socket, &command)?;
    // A container whose start failed stays behind as a record.
    let _ = ctr(socket, &["containers", "rm", id]);
    Ok(out)
}

fn entrypoint(image: &Image) -> String {
    serde_json::from_slice::<Value>(&image.config)
        .ok()
        .and_then(|c| {
            c["config"]["Entrypoint"].as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        })
        .unwrap_or_default()
}

fn status(imagegate: &Path, socket: &Path) -> Option<Value> {
    let out = Command::new(imagegate)
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn verdict_of(imagegate: &Path, socket: &Path, name: &str) -> Option<Value> {
    status(imagegate, socket)?["verdicts"]
        .as_array()?
        .iter()
        .find(|v| v["image"] == name)
        .cloned()
}

/// Why the verdict is what it is, from `imagegate verify --json` (the same verification the
/// daemon ran; the status socket reports outcomes only).
fn why(imagegate: &Path, policy: &Path, registry: &str, name: &str) -> String {
    let Ok(out) = Command::new(imagegate)
        .args([
            "verify",
            name,
            "--json",
            "--insecure-registry",
            registry,
            "--policy",
        ])
        .arg(policy)
        .output()
    else {
        return String::new();
    };
    let Ok(verdict) = serde_json::from_slice::<Value>(&out.stdout) else {
        return String::new();
    };
    let reasons: Vec<String> = verdict["reasons"]
        .as_array()
        .map(|reasons| {
            reasons
                .iter()
                .map(|r| {
                    let detail = r["detail"].as_str().unwrap_or("");
                    match (r["accepted"].as_bool(), r["kind"].as_str()) {
                        (Some(true), _) => {
                            format!("accepted by {}", r["authority"].as_str().unwrap_or("?"))
                        }
                        (_, Some(kind)) => format!("{kind}: {detail}"),
                        _ => detail.to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if reasons.is_empty() {
        " (no signature found)".into()
    } else {
        format!(" ({})", reasons.join("; "))
    }
}

fn events_for(path: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| {
            // A container's event belongs to the container's image; a host process's to the
            // images holding the file's layer.
            if event["container"]["image"].is_string() {
                event["container"]["image"] == name
            } else {
                event["images"]
                    .as_array()
                    .is_some_and(|images| images.iter().any(|i| i["image"]["name"] == name))
            }
        })
        .collect()
}

fn describe_event(event: &Value) -> String {
    let container = &event["container"];
    if container["image"].is_string() {
        return format!(
            "verdict={} reason={} hook={} path={} container={} image={} {}",
            event["verdict"].as_str().unwrap_or("?"),
            event["reason"].as_str().unwrap_or("?"),
            event["hook"].as_str().unwrap_or("?"),
            event["path"].as_str().unwrap_or("?"),
            container["id"].as_str().unwrap_or("?"),
            container["image"].as_str().unwrap_or("?"),
            container["digest"].as_str().unwrap_or("?"),
        );
    }
    let owners: Vec<String> = event["images"]
        .as_array()
        .map(|images| {
            images
                .iter()
                .map(|i| {
                    format!(
                        "{} {}{}",
                        i["image"]["name"].as_str().unwrap_or("?"),
                        i["manifest_digest"].as_str().unwrap_or("?"),
                        if i["trusted"] == true {
                            " (trusted)"
                        } else {
                            ""
                        }
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "verdict={} reason={} hook={} command={} image={}",
        event["verdict"].as_str().unwrap_or("?"),
        event["reason"].as_str().unwrap_or("?"),
        event["hook"].as_str().unwrap_or("?"),
        event["command"].as_str().unwrap_or("?"),
        owners.join(", "),
    )
}

fn daemon_log(log: &Path) -> String {
    format!(
        "imagegate daemon log ({}):\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        if done() {
            return Ok(());
        }
        if started.elapsed() >= limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Running {
    /// Stops the daemon first (so no exec is pending on it), then the registry and containerd,
    /// then any shim of this containerd, and unmounts what is under the demo directory.
    fn stop(&mut self) {
        if let Some(child) = self.daemon.take() {
            registry::stop_child(child, Duration::from_secs(5));
        }
        if let Some(mut registry) = self.registry.take() {
            registry.stop();
        }
        if let Some(child) = self.containerd.take() {
            registry::stop_child(child, Duration::from_secs(10));
        }
        clean_leftovers(&self.dir);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The programs the demo starts (directly, or containerd for it).
const DEMO_PROGRAMS: &[&str] = &[
    "containerd",
    "containerd-shim-runc-v2",
    "docker-registry",
    "imagegate",
    "runc",
];

/// Processes of [`DEMO_PROGRAMS`] whose command line names `dir` (containerd shims name its socket): a demo that was
/// interrupted, or a shim that outlived its container.
fn processes_under(dir: &Path) -> Vec<i32> {
    let Some(dir) = dir.to_str() else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let ours = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                exe.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| DEMO_PROGRAMS.contains(&name))
            });
            ours && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(dir))
        })
        .collect()
}

/// Kills (by pid) what a previous or failed run left under `dir`, then unmounts everything
/// mounted below it, deepest first.
fn clean_leftovers(dir: &Path) {
    for pid in processes_under(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let Some(prefix) = dir.to_str() else { return };
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    for _ in 0..3 {
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
            .filter(|target| target.starts_with(&prefix))
            .collect();
        if mounts.is_empty() {
            return;
        }
        for target in mounts.iter().rev() {
            let _ = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
