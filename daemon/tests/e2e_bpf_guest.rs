//! End to end with the BPF LSM backend, inside a QEMU guest (this machine's kernel refuses BPF LSM
//! programs): `cargo xtask vm-test --kernel 6.12 --suite e2e` boots Debian's 6.12 cloud kernel
//! with this test binary, the release `imagegate`, Debian's containerd, containerd-shim-runc-v2,
//! ctr, runc and docker-registry, and runs it there (it is `#[ignore]`d on the host).
//!
//! In the guest: the registry on 127.0.0.1, images pushed and signed there in cosign's legacy
//! `.sig` format (imagegate-testkit), a private containerd pulling them with
//! `ctr images pull --plain-http`, `imagegate daemon` with `backend = "auto"`, which must pick
//! BPF LSM, and real runc containers from `ctr run`:
//! 1. the image signed by the policy's key runs its entrypoint;
//! 2. an unsigned image and one signed by a key the policy does not trust cannot execute their
//!    entrypoint (`operation not permitted`), each with a decision event naming image and digest;
//! 3. audit mode: both run, and the would-be denials are logged;
//! 4. an unsigned top layer on the signed base: its binary cannot execute, and a library from it
//!    given to a binary of the signed base with `LD_PRELOAD` is not mapped executable (the
//!    constructor never runs; the event's hook is `mmap`), while the base's program runs, and
//!    loads the base's copy of the same library;
//! 5. drift: a binary written into the container's writable layer cannot execute;
//! 6. `ctr exec` of the signed base's busybox into a running container of the mixed image
//!    (started while its scope audited) is denied once a reload makes the scope enforce.
//!
//! A third test (case 9) keeps containerd's root on a small ext4 file system, where a new
//! snapshot gets a removed trusted one's inode number while the BPF tables still hold its entry.
//!
//! A second test puts containerd's root and the daemon's state on btrfs (a loop device): the
//! programs key files by the subvolume's device that `stat` reports, and the daemon's self-test
//! runs on that file system before it claims enforcement.
//!
//! Environment (set by the guest's command): `IMAGEGATE_BIN` (the daemon), `IMAGEGATE_E2E_FIXTURES`
//! (a directory holding `preload.so`, a library whose constructor prints `PRELOADED`, and
//! `true-dyn`, a dynamically linked program), `IMAGEGATE_E2E_WAIT_SECS` (waits under emulation).
#![allow(clippy::unwrap_used)] // tests: a panic is a failure with its message

mod support;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use imagegate_testkit::{
    image::{self, File},
    registry::{self, LocalRegistry},
    sign::{self, Key},
};
use serde_json::Value;
use support::{
    containerd::PrivateContainerd,
    daemon::{self, assert_denied, assert_names_image, DaemonProcess, Settings},
    reload,
};

/// The dynamic loader and C library a Debian amd64 program needs, at the paths it asks for.
const DYNAMIC_RUNTIME: [&str; 2] = [
    "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
];
/// What the fixture library's constructor prints.
const PRELOADED: &str = "PRELOADED";

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that the daemon picked BPF LSM and returns its status.
fn assert_bpf_backend(status: &Value) {
    assert_eq!(
        status["backend"], "bpf-lsm",
        "backend auto did not pick BPF LSM: {status}"
    );
}

/// Enforce or audit, backend chosen by the daemon (BPF LSM here), the guest's registry insecure.
fn settings(mode: &'static str, addr: &str) -> Settings<'static> {
    Settings {
        mode,
        backend: "auto",
        insecure: vec![addr.to_owned()],
        tag: mode,
    }
}

#[test]
#[ignore = "needs a kernel that runs BPF LSM programs: cargo xtask vm-test --kernel 6.12 --suite e2e"]
fn bpf_lsm_daemon_enforces_signed_images_in_guest() {
    assert!(support::is_root(), "containerd, runc and BPF need root");
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    assert!(
        lsm.split(',').any(|l| l.trim() == "bpf"),
        "bpf is not an active LSM here ({lsm:?}): run this in the guest (cargo xtask vm-test \
         --kernel 6.12 --suite e2e)"
    );
    let fixtures = PathBuf::from(
        std::env::var_os("IMAGEGATE_E2E_FIXTURES")
            .expect("IMAGEGATE_E2E_FIXTURES (set by cargo xtask vm-test --suite e2e)"),
    );

    // Where the time goes under emulation, on the console.
    let started = Instant::now();
    let phase = |what: &str| eprintln!("e2e {:>6.1} s: {what}", started.elapsed().as_secs_f64());
    let dir = support::scratch_dir("e2e-bpf");
    let containerd = PrivateContainerd::start_on_tmpfs(&dir);
    phase("containerd up");
    let registry = LocalRegistry::start(&dir.join("registry")).unwrap();
    let addr = registry.addr.clone();

    phase("registry up");
    // The signed base: static busybox, a dynamically linked program with its loader and libc,
    // and a copy of the fixture library (the LD_PRELOAD control).
    let busybox = read("/bin/busybox");
    let preload = read(fixtures.join("preload.so"));
    let mut base_files = vec![
        File::new("bin/busybox", busybox.clone(), 0o755),
        File::new("bin/true-dyn", read(fixtures.join("true-dyn")), 0o755),
        File::new("lib/good.so", preload.clone(), 0o644),
    ];
    base_files.extend(
        DYNAMIC_RUNTIME
            .iter()
            .map(|path| File::new(path, read(format!("/{path}")), 0o755)),
    );
    let base = image::layer(&base_files).unwrap();
    let own = |marker: &str| {
        image::layer(&[
            File::new("bin/busybox", busybox.clone(), 0o755),
            File::new(&format!("etc/{marker}"), marker, 0o644),
        ])
        .unwrap()
    };
    let hello = ["/bin/busybox", "echo", "hello"];
    let signed = image::image(vec![base.clone()], &hello);
    let unsigned = image::image(vec![own("unsigned")], &hello);
    let untrusted = image::image(vec![own("untrusted")], &hello);
    let top = image::layer(&[
        File::new("usr/local/bin/busybox", busybox, 0o755),
        File::new("usr/local/lib/evil.so", preload, 0o644),
    ])
    .unwrap();
    let mixed = image::image(
        vec![base.clone(), top],
        &["/usr/local/bin/busybox", "echo", "top"],
    );
    // Byte-identical to the signed image's layer, another command: unsigned.
    let config_only = image::image(vec![base], &["/bin/busybox", "echo", "tampered"]);

    phase("images built");
    let trusted_key = Key::generate().unwrap();
    let other_key = Key::generate().unwrap();
    let client = registry::Client::new(&addr).unwrap();
    let name = |repo: &str| format!("{addr}/{repo}:v1");
    for (repo, img, key) in [
        ("e2e/signed", &signed, Some(&trusted_key)),
        ("e2e/unsigned", &unsigned, None),
        ("e2e/untrusted-key", &untrusted, Some(&other_key)),
        ("e2e/mixed", &mixed, None),
        ("e2e/config-only", &config_only, None),
        ("e2e-audited/mixed", &mixed, None),
    ] {
        let digest = client.push_image(repo, "v1", img).unwrap();
        if let Some(key) = key {
            sign::sign_legacy(&client, key, &addr, repo, &digest).unwrap();
        }
    }
    phase("pushed and signed");
    std::fs::write(dir.join("trusted.pub"), trusted_key.public_pem().unwrap()).unwrap();
    // `e2e-audited/` is a scope in audit mode (a rollout): its containers run, reported.
    let auditing = format!(
        "version = 1\n[default]\nrequire = \"reject\"\n[[scope]]\nmatch = \"{addr}/e2e/**\"\n\
         require = \"signatures\"\n[[scope.keys]]\nname = \"trusted\"\npath = \"{}\"\n\
         [[scope]]\nmatch = \"{addr}/e2e-audited/**\"\nrequire = \"reject\"\nmode = \"audit\"\n",
        dir.join("trusted.pub").display()
    );
    let enforcing = auditing.replace("mode = \"audit\"\n", "");
    std::fs::write(dir.join("policy.toml"), &auditing).unwrap();

    phase("policy written");
    // Enforce mode, backend chosen by the daemon.
    let enforce = settings("enforce", &addr);
    let enforcing_daemon = DaemonProcess::start(&dir, &enforce.write(&dir, &containerd), "enforce");
    assert_bpf_backend(&daemon::status(&dir).unwrap());

    phase("daemon up (enforce)");
    // Pulled while the daemon runs: verified on pull, from the registry's signatures.
    // All four at once: pulls are slow under emulation.
    std::thread::scope(|threads| {
        for repo in [
            "e2e/signed",
            "e2e/unsigned",
            "e2e/untrusted-key",
            "e2e/mixed",
            "e2e/config-only",
            "e2e-audited/mixed",
        ] {
            let (containerd, image) = (&containerd, name(repo));
            threads.spawn(move || {
                let out = containerd.ctr(&["images", "pull", "--plain-http", &image]);
                assert!(out.status.success(), "pull {image}: {out:?}");
            });
        }
    });
    phase("pulled");
    let expected: Vec<(String, &str)> = [
        ("e2e/signed", "trusted"),
        ("e2e/unsigned", "untrusted"),
        ("e2e/untrusted-key", "untrusted"),
        ("e2e/mixed", "untrusted"),
        ("e2e/config-only", "untrusted"),
        ("e2e-audited/mixed", "untrusted"),
    ]
    .into_iter()
    .map(|(repo, outcome)| (name(repo), outcome))
    .collect();
    let status = enforcing_daemon.wait_for_verdicts(&dir, &expected);
    assert_bpf_backend(&status);
    let events = enforce.events(&dir);

    phase("verdicts in");
    // 1. Signed by the trusted key: the entrypoint runs.
    let out = containerd.run(&name("e2e/signed"), "c-signed", &[]);
    assert!(
        out.status.success(),
        "signed image failed: {out:?}\n{}",
        enforcing_daemon.log_text()
    );
    assert_eq!(stdout(&out).trim(), "hello");
    phase("case 1 done");
    // 2. Unsigned, and signed by a key the policy does not trust: the entrypoint cannot execute.
    for (repo, id, img) in [
        ("e2e/unsigned", "c-unsigned", &unsigned),
        ("e2e/untrusted-key", "c-untrusted", &untrusted),
    ] {
        let out = containerd.run(&name(repo), id, &[]);
        assert_denied(&out, repo);
        let event = daemon::verdict_for(&events, "denied", &name(repo));
        assert_names_image(&event, &name(repo), &img.manifest_digest());
        assert_eq!(event["hook"], "exec", "{event}");
        assert_eq!(event["mode"], "enforce", "{event}");
    }
    // Two containers of the unsigned image at once, both gone before their events are read:
    // each event names its own container, by the cgroup id the BPF program reported.
    let twins = ["c-twin-a", "c-twin-b"];
    let unsigned_name = name("e2e/unsigned");
    for out in containerd.run_together(&unsigned_name, &twins) {
        assert_denied(&out, "a twin of the unsigned image");
    }
    for id in twins {
        let event = daemon::wait_for_event(&events, |e| {
            e["verdict"] == "denied" && e["container"]["id"] == id
        });
        assert!(
            event["cgroup_id"].as_u64().is_some_and(|c| c > 0),
            "{event}"
        );
    }

    phase("case 2 done");
    // 4. Signed base + unsigned top layer: the top layer's binary cannot execute ...
    let out = containerd.run(&name("e2e/mixed"), "c-mixed-top", &[]);
    assert_denied(&out, "top layer of the mixed image");
    let event = daemon::verdict_for(&events, "denied", &name("e2e/mixed"));
    assert_names_image(&event, &name("e2e/mixed"), &mixed.manifest_digest());
    // ... and its container runs nothing, not even the signed base's binary: the container
    // is bound to its (unsigned) image.
    let out = containerd.run(
        &name("e2e/mixed"),
        "c-mixed-base",
        &["/bin/busybox", "echo", "base ran"],
    );
    assert_denied(&out, "base binary in a container of the mixed image");
    assert!(!stdout(&out).contains("base ran"), "{out:?}");
    let event = daemon::wait_for_event(&events, |e| {
        e["reason"] == "untrusted_image" && e["container"]["id"] == "c-mixed-base"
    });
    assert_eq!(
        event["container"]["digest"],
        mixed.manifest_digest(),
        "{event}"
    );
    // In the signed image's container, a library of its own image loads through LD_PRELOAD
    // (an executable mapping of its own layer).
    let out = containerd.run(
        &name("e2e/signed"),
        "c-signed-preload",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo signed:; LD_PRELOAD=/lib/good.so /bin/true-dyn",
        ],
    );
    assert!(
        out.status.success(),
        "the signed image's programs failed: {out:?}"
    );
    assert_eq!(
        stdout(&out),
        format!("signed:\n{PRELOADED}\n"),
        "the signed image's own library must load: {out:?}"
    );
    // Config-only tamper: the signed image's layer, another command: denied.
    let out = containerd.run(&name("e2e/config-only"), "c-config-only", &[]);
    assert_denied(&out, "config-only tampered image");
    assert!(!stdout(&out).contains("tampered"), "{out:?}");
    // A local retag of the signed image is the same manifest: it runs.
    let retag = format!("{}-retag", name("e2e/signed"));
    let out = containerd.ctr(&["images", "tag", &name("e2e/signed"), &retag]);
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + daemon::wait_limit();
    while daemon::outcome(&daemon::status(&dir).unwrap_or_default(), &retag).as_deref()
        != Some("trusted")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the retag was not judged"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = containerd.run(&retag, "c-retag", &["/bin/busybox", "echo", "retag"]);
    assert!(out.status.success(), "the signed image's retag: {out:?}");
    // Files outside every layer: a tmpfs volume. An untrusted container runs nothing from it
    // (BPF LSM sees every file system); a trusted one may (outside_image = allow).
    let volume = dir.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &volume,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755"),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", volume.join("echo")).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        volume.display()
    );
    let out = containerd.run_with(
        &["--mount", &mount],
        &name("e2e/unsigned"),
        "c-volume",
        &["/data/echo", "volume ran"],
    );
    assert_denied(&out, "an untrusted container's tmpfs volume binary");
    let event = daemon::wait_for_event(&events, |e| {
        e["reason"] == "untrusted_image" && e["container"]["id"] == "c-volume"
    });
    assert!(
        event["layer"].is_null(),
        "a volume file is in no layer: {event}"
    );
    let out = containerd.run_with(
        &["--mount", &mount],
        &name("e2e/signed"),
        "c-volume-trusted",
        &["/data/echo", "volume ran"],
    );
    assert!(
        out.status.success(),
        "a trusted container's volume binary: {out:?}"
    );
    let _ = nix::mount::umount2(&volume, nix::mount::MntFlags::MNT_DETACH);
    phase("case 4 done");
    // 5. Drift: a binary copied into the writable layer of a trusted image's container.
    let out = containerd.run(
        &name("e2e/signed"),
        "c-drift",
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox cp /bin/busybox /dropped && /dropped echo drifted",
        ],
    );
    assert!(!out.status.success(), "drift ran: {out:?}");
    assert!(!stdout(&out).contains("drifted"), "drift ran: {out:?}");
    let event = daemon::wait_for_event(&events, |e| e["reason"] == "drift");
    assert_eq!(event["verdict"], "denied", "{event}");
    assert_eq!(event["container"]["id"], "c-drift", "{event}");
    phase("case 5 done");
    // `ctr exec` of a signed base layer's binary into a running container of the unsigned
    // image built on it, started while its scope audited, once a reload makes the scope enforce.
    reload::exec_is_denied_once_the_scope_enforces(
        &containerd,
        &enforcing_daemon,
        &events,
        &name("e2e-audited/mixed"),
        "/bin/busybox",
        &reload::ScopeTurnsToEnforce {
            policy_path: &dir.join("policy.toml"),
            auditing: &auditing,
            enforcing: &enforcing,
        },
    );
    phase("case 1 (exec after reload) done");
    enforcing_daemon.stop();

    phase("enforce daemon stopped");
    // 3. Audit mode: the same kernel programs (still pinned) now allow and report.
    let audit = settings("audit", &addr);
    let auditing = DaemonProcess::start(&dir, &audit.write(&dir, &containerd), "audit");
    assert_bpf_backend(&auditing.wait_for_verdicts(&dir, &expected));
    phase("audit daemon up, verdicts in");
    let events = audit.events(&dir);
    for (repo, id, img) in [
        ("e2e/unsigned", "c-audit-unsigned", &unsigned),
        ("e2e/untrusted-key", "c-audit-untrusted", &untrusted),
    ] {
        let out = containerd.run(&name(repo), id, &[]);
        assert!(
            out.status.success(),
            "audit mode blocked {repo}: {out:?}\n{}",
            auditing.log_text()
        );
        assert_eq!(stdout(&out).trim(), "hello");
        let event = daemon::verdict_for(&events, "audit", &name(repo));
        assert_names_image(&event, &name(repo), &img.manifest_digest());
        assert_eq!(event["mode"], "audit", "{event}");
    }
    phase("case 3 done");
    auditing.stop();

    // The programs and maps outlive the daemon by design; this test's guest removes them.
    let out = std::process::Command::new(daemon::imagegate_bin())
        .args(["kernel", "uninstall"])
        .output()
        .expect("imagegate kernel uninstall");
    assert!(out.status.success(), "uninstall: {out:?}");
}

#[test]
#[ignore = "needs a kernel that runs BPF LSM programs: cargo xtask vm-test --kernel 6.12 --suite e2e"]
fn bpf_lsm_daemon_enforces_with_containerd_root_on_btrfs_in_guest() {
    assert!(
        support::is_root(),
        "containerd, runc, loop devices and BPF need root"
    );
    let dir = support::scratch_dir("e2e-bpf-btrfs");
    let log = support::btrfs::enforce_with_root_on_btrfs(&dir, "auto");
    let enforcing = log
        .lines()
        .find(|line| line.contains("BPF LSM backend enforcing"))
        .unwrap_or_else(|| panic!("the daemon did not enforce with BPF LSM: {log}"));
    // The self-test ran on the btrfs file system (the daemon's state directory is on it).
    let on_btrfs = dir.join("btrfs/state/selftest");
    assert!(
        enforcing.contains(on_btrfs.to_str().unwrap()),
        "self-test not on btrfs ({}): {enforcing}",
        on_btrfs.display()
    );
}

/// Case 9 with BPF LSM, whose pinned tables outlive the daemon: a new snapshot on ext4 that gets
/// a removed trusted one's inode number inherits nothing from the entry left behind.
#[test]
#[ignore = "needs a kernel that runs BPF LSM programs: cargo xtask vm-test --kernel 6.12 --suite e2e"]
fn bpf_lsm_daemon_a_reused_snapshot_inode_inherits_nothing_in_guest() {
    assert!(
        support::is_root(),
        "containerd, runc, loop devices and BPF need root"
    );
    let dir = support::scratch_dir("e2e-bpf-inode-reuse");
    let log = support::inode_reuse::a_reused_inode_inherits_nothing(&dir, "auto");
    assert!(
        log.contains("BPF LSM backend enforcing"),
        "the daemon did not enforce with BPF LSM: {log}"
    );
}
