//! The kernel enforcement suite, run as root inside a QEMU guest by `cargo xtask vm-test`.
//!
//! It lays out a containerd-like snapshotter root on a tmpfs
//! (`.../io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs`), mounts real overlays over
//! it, installs the BPF LSM backend and checks every numbered case of the kernel enforcement
//! issue. It prints one line per case and closes with `N passed, M failed`.
//!
//! `imagegate-vm-suite probe ...` is the helper the suite copies into a verified layer: it maps
//! a library the ways a program can (mmap, mprotect, dlopen) and reports what the kernel said.
//! `imagegate-vm-suite bench ...` measures exec latency (see `bench.rs`).

mod bench;
mod btrfs;
mod fixture;
mod inode_reuse;
mod loopfs;
mod probe;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use fixture::Fixture;
use imagegate::enforce::{
    bpf::BpfBackend, ContainerTrust, Decision, Drift, LayerId, LayerState, Mode, OutsideImage,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("probe") => std::process::exit(probe::run(&args[2..])),
        Some("bench") => {
            if let Err(error) = bench::run(&args[2..]) {
                eprintln!("bench: {error:#}");
                std::process::exit(1);
            }
        }
        _ => std::process::exit(suite()),
    }
}

type Case = fn(&mut Context) -> Result<()>;

/// What every case works with.
struct Context {
    fixture: Fixture,
    backend: Option<BpfBackend>,
}

impl Context {
    fn backend(&mut self) -> &mut BpfBackend {
        self.backend.as_mut().expect("backend installed")
    }

    /// Drops queued events so a case sees only its own.
    fn clear_events(&mut self) {
        let _ = self.backend().drain_events();
    }

    /// Events since the last clear that concern this fixture's layers.
    fn events(&mut self) -> Vec<Decision> {
        let scope_dev = self.fixture.scope.dev;
        self.backend()
            .drain_events()
            .into_iter()
            .filter(|event| event.file.dev == scope_dev)
            .collect()
    }

    fn reset(&mut self) -> Result<()> {
        // A case that failed half-way may have dropped the backend.
        if self.backend.is_none() {
            let mut backend = BpfBackend::install(Path::new(PIN_DIR))?;
            backend.add_scope(&self.fixture.snapshots)?;
            self.backend = Some(backend);
        }
        let fixture_layers = self.fixture.all_layers();
        let backend = self.backend();
        backend.set_mode(Mode::Enforce)?;
        backend.set_drift(Drift::Deny)?;
        backend.set_outside_image(OutsideImage::Allow)?;
        for layer in fixture_layers {
            backend.remove_layer(layer)?;
            backend.remove_container(layer)?;
        }
        let verified = self.fixture.verified_layers();
        let backend = self.backend();
        for layer in verified {
            backend.set_layer(layer, LayerState::Verified)?;
        }
        self.clear_events();
        Ok(())
    }
}

fn suite() -> i32 {
    let cases: &[(&str, Case)] = &[
        (
            "1_unverified_lower_layer_enforce_and_audit",
            case_unverified_lower,
        ),
        (
            "2_verified_layer_allowed_without_event",
            case_verified_layer,
        ),
        ("3_drift_deny_and_allow", case_drift),
        ("4_out_of_scope_overlay_and_host_binary", case_out_of_scope),
        (
            "5a_executable_mappings_of_unverified_library",
            case_mappings,
        ),
        ("5b_ld_preload_from_unverified_layer", case_ld_preload),
        ("5c_script_in_unverified_layer", case_script),
        ("5d_nested_deeper_than_walk_bound", case_deep),
        ("6_elf_interpreter_in_container_roots", case_interpreter),
        (
            "12_untrusted_container_runs_nothing_not_even_verified_layers",
            case_untrusted_container,
        ),
        (
            "13_trusted_container_outside_image_allow_and_deny",
            case_outside_image,
        ),
        (
            "14_host_process_keeps_the_layer_rule_through_a_container_root",
            case_host_through_container,
        ),
        (
            "15_memfd_exec_in_untrusted_and_trusted_containers",
            case_memfd,
        ),
        (
            "16_a_new_layer_does_not_inherit_a_removed_ones_inode_number",
            inode_reuse::case_inode_reuse,
        ),
        (
            "17_btrfs_scope_keyed_by_subvolume_device_self_test_there",
            btrfs::case_btrfs,
        ),
        ("8_layer_table_changes_take_effect", case_table_changes),
        ("9_self_test_on_scratch_overlay", case_self_test),
        (
            "10_audit_layer_allowed_and_reported_in_enforce_mode",
            case_audit_layer,
        ),
        (
            "11_upgrade_from_another_abi_keeps_tables_and_enforcing",
            case_upgrade,
        ),
        ("7_pins_survive_kill_reattach_uninstall", case_pins),
    ];
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("imagegate kernel suite on {kernel}");
    let mut context = match setup() {
        Ok(context) => context,
        Err(error) => {
            println!("FAILED setup: {error:#}");
            println!("0 passed, {} failed", cases.len());
            return 1;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        let result = context.reset().and_then(|()| case(&mut context));
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok {name}");
            }
            Err(error) => {
                failed += 1;
                println!("FAILED {name}: {error:#}");
            }
        }
    }
    context.fixture.cleanup();
    let _ = BpfBackend::uninstall(Path::new(PIN_DIR));
    println!("{passed} passed, {failed} failed");
    i32::from(failed != 0)
}

const PIN_DIR: &str = "/sys/fs/bpf/imagegate";

fn setup() -> Result<Context> {
    let fixture = Fixture::create().context("building the snapshotter layout")?;
    let mut backend =
        BpfBackend::install(Path::new(PIN_DIR)).context("installing the BPF backend")?;
    backend
        .add_scope(&fixture.snapshots)
        .context("adding the scope")?;
    Ok(Context {
        fixture,
        backend: Some(backend),
    })
}

/// Runs `path` as a busybox `true` (busybox picks its applet from argv[0]).
fn exec_true(path: &Path) -> std::io::Result<std::process::ExitStatus> {
    Command::new(path)
        .arg0("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

fn expect_eperm(what: &str, result: std::io::Result<std::process::ExitStatus>) -> Result<()> {
    match result {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => bail!("{what}: expected EPERM, got {other:?}"),
    }
}

fn expect_runs(what: &str, result: std::io::Result<std::process::ExitStatus>) -> Result<()> {
    match result {
        Ok(status) if status.success() => Ok(()),
        other => bail!("{what}: expected to run, got {other:?}"),
    }
}

fn one_event<'a>(events: &'a [Decision], what: &str) -> Result<&'a Decision> {
    ensure!(
        events.len() == 1,
        "{what}: expected exactly one event, got {events:#?}"
    );
    Ok(&events[0])
}

fn case_unverified_lower(cx: &mut Context) -> Result<()> {
    let target = cx.fixture.merged.join("bin/evil");
    let unverified = cx.fixture.layer_id("unverified")?;
    expect_eperm("exec in enforce mode", exec_true(&target))?;
    let events = cx.events();
    let event = one_event(&events, "enforce")?;
    ensure!(
        event.verdict == "denied" && event.hook == "exec" && event.reason == "unverified_layer",
        "unexpected event {event:?}"
    );
    ensure!(
        event.layer == Some(unverified),
        "event names layer {:?}, expected {unverified}",
        event.layer
    );
    cx.backend().set_mode(Mode::Audit)?;
    expect_runs("exec in audit mode", exec_true(&target))?;
    let events = cx.events();
    let event = one_event(&events, "audit")?;
    ensure!(
        event.verdict == "audit" && event.mode == "audit",
        "unexpected event {event:?}"
    );
    ensure!(
        event.layer == Some(unverified),
        "audit event names the wrong layer"
    );
    Ok(())
}

fn case_verified_layer(cx: &mut Context) -> Result<()> {
    expect_runs(
        "exec from verified layer",
        exec_true(&cx.fixture.merged.join("bin/ok")),
    )?;
    let events = cx.events();
    ensure!(
        events.is_empty(),
        "verified exec produced events: {events:?}"
    );
    Ok(())
}

fn case_drift(cx: &mut Context) -> Result<()> {
    // Written through the overlay: the bytes land in the writable (upper) layer.
    let written = cx.fixture.merged.join("bin/written");
    std::fs::copy("/bin/busybox", &written).context("writing into the container")?;
    let upper = cx.fixture.layer_id("upper")?;
    expect_eperm("exec of unregistered upper file", exec_true(&written))?;
    cx.backend().set_layer(upper, LayerState::Writable)?;
    cx.clear_events();
    expect_eperm("exec with drift=deny", exec_true(&written))?;
    let events = cx.events();
    let event = one_event(&events, "drift deny")?;
    ensure!(
        event.reason == "drift" && event.layer == Some(upper),
        "unexpected event {event:?}"
    );
    cx.backend().set_drift(Drift::Allow)?;
    expect_runs("exec with drift=allow", exec_true(&written))?;
    ensure!(cx.events().is_empty(), "drift=allow produced events");
    std::fs::remove_file(&written)?;
    Ok(())
}

fn case_out_of_scope(cx: &mut Context) -> Result<()> {
    expect_runs(
        "exec from an overlay outside the scope",
        exec_true(&cx.fixture.other_merged.join("bin/evil")),
    )?;
    expect_runs("host binary", exec_true(Path::new("/bin/busybox")))?;
    let all = cx.backend().drain_events();
    ensure!(
        all.is_empty(),
        "out-of-scope execs produced events: {all:?}"
    );
    Ok(())
}

/// Runs the probe (a copy of this binary in a verified layer) for one mapping kind.
fn probe(cx: &Context, how: &str, library: &Path) -> Result<probe::Outcome> {
    let output = Command::new(cx.fixture.merged.join("bin/prober"))
        .args(["probe", how])
        .arg(library)
        .output()
        .context("running the probe")?;
    probe::Outcome::from_code(output.status.code()).with_context(|| {
        format!(
            "probe {how} {}: {}",
            library.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn case_mappings(cx: &mut Context) -> Result<()> {
    let good = cx.fixture.merged.join("lib/good.so");
    let evil = cx.fixture.merged.join("lib/evil.so");
    for how in ["mmap", "mprotect", "dlopen"] {
        ensure!(
            probe(cx, how, &good)? == probe::Outcome::Mapped,
            "{how} of a verified library failed"
        );
        ensure!(
            probe(cx, how, &evil)? == probe::Outcome::Denied,
            "{how} of an unverified library was not denied"
        );
        let events = cx.events();
        let expected_hook = if how == "mprotect" {
            "mprotect"
        } else {
            "mmap"
        };
        ensure!(
            events
                .iter()
                .any(|e| e.hook == expected_hook && e.verdict == "denied"),
            "{how}: no {expected_hook} deny event in {events:?}"
        );
    }
    Ok(())
}

fn case_ld_preload(cx: &mut Context) -> Result<()> {
    let run = |library: &Path| {
        Command::new(cx.fixture.merged.join("bin/prober"))
            .args(["probe", "noop"])
            .env("LD_PRELOAD", library)
            .output()
    };
    let good = run(&cx.fixture.merged.join("lib/good.so"))?;
    ensure!(
        String::from_utf8_lossy(&good.stdout).contains("PRELOADED"),
        "control: a verified LD_PRELOAD library did not load: {good:?}"
    );
    let evil = run(&cx.fixture.merged.join("lib/evil.so"))?;
    ensure!(
        !String::from_utf8_lossy(&evil.stdout).contains("PRELOADED"),
        "an unverified LD_PRELOAD library ran its constructor"
    );
    ensure!(
        String::from_utf8_lossy(&evil.stderr).contains("cannot be preloaded"),
        "ld.so did not report the refused preload: {evil:?}"
    );
    let events = cx.events();
    ensure!(
        events
            .iter()
            .any(|e| e.hook == "mmap" && e.verdict == "denied"),
        "no mmap deny event: {events:?}"
    );
    Ok(())
}

fn case_script(cx: &mut Context) -> Result<()> {
    expect_runs(
        "script in a verified layer",
        Command::new(cx.fixture.merged.join("bin/good.sh")).status(),
    )?;
    expect_eperm(
        "script in an unverified layer",
        Command::new(cx.fixture.merged.join("bin/evil.sh")).status(),
    )?;
    let events = cx.events();
    one_event(&events, "script")?;
    Ok(())
}

fn case_deep(cx: &mut Context) -> Result<()> {
    let deep = cx
        .fixture
        .merged
        .join(fixture::deep_path("deep-unverified"));
    expect_eperm("deep file in an unverified layer", exec_true(&deep))?;
    let events = cx.events();
    let event = one_event(&events, "deep")?;
    ensure!(
        event.reason == "walk_limit",
        "expected walk_limit, got {event:?}"
    );
    // Documented behaviour: past the bound the walk cannot tell the layer, so even a verified
    // layer's file is denied there.
    let deep_verified = cx.fixture.merged.join(fixture::deep_path("deep-verified"));
    expect_eperm("deep file in a verified layer", exec_true(&deep_verified))?;
    // Just inside the bound, a verified file runs.
    expect_runs(
        "shallow control",
        exec_true(&cx.fixture.merged.join(fixture::shallow_path())),
    )?;
    Ok(())
}

fn chroot_exec(root: &Path, program: &str) -> std::io::Result<std::process::ExitStatus> {
    let root = root.to_owned();
    let mut command = Command::new(program);
    // SAFETY: chroot and chdir are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::chroot(&root)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    command.stdout(Stdio::null()).stderr(Stdio::null()).status()
}

/// A process chrooted into an overlay whose upper directory is a layer directory under a scope
/// is in that container: judged by the container's trust, whatever the layers of its files.
fn case_interpreter(cx: &mut Context) -> Result<()> {
    let good = cx.fixture.layer_id("interp-upper-good")?;
    cx.backend()
        .set_container(good, ContainerTrust::Trusted.into())?;
    expect_runs(
        "dynamic binary and interpreter of a trusted container's own layers",
        chroot_exec(&cx.fixture.interp_good, "/bin/dyn"),
    )?;
    ensure!(
        cx.events().is_empty(),
        "a trusted container's exec reported"
    );
    expect_eperm(
        "dynamic binary of a container not judged yet",
        chroot_exec(&cx.fixture.interp_bad, "/bin/dyn"),
    )?;
    let bad = cx.fixture.layer_id("interp-upper-bad")?;
    let events = cx.events();
    let event = one_event(&events, "interpreter")?;
    ensure!(
        event.reason == "untrusted_image" && event.container_root == Some(bad),
        "expected untrusted_image naming the container root {bad}, got {event:?}"
    );
    Ok(())
}

/// Test cases 12: every exec of an untrusted container is denied, including files of a layer
/// a trusted image vouches for and files outside every layer; audit allows and reports.
fn case_untrusted_container(cx: &mut Context) -> Result<()> {
    let root = cx.fixture.interp_good.clone();
    let key = cx.fixture.layer_id("interp-upper-good")?;
    let outside = cx.fixture.outside_dir(&root)?;
    for trust in [None, Some(ContainerTrust::Untrusted)] {
        if let Some(trust) = trust {
            cx.backend().set_container(key, trust.into())?;
        }
        cx.clear_events();
        expect_eperm(
            "verified layer's binary in an untrusted container",
            chroot_exec(&root, "/bin/dyn"),
        )?;
        expect_eperm(
            "tmpfs binary in an untrusted container",
            chroot_exec(&root, &outside),
        )?;
        let events: Vec<Decision> = cx.backend().drain_events();
        let reasons: Vec<&str> = events.iter().map(|e| e.reason).collect();
        ensure!(
            events.len() >= 2 && reasons.iter().all(|r| *r == "untrusted_image"),
            "{trust:?}: expected untrusted_image events, got {events:?}"
        );
    }
    cx.backend()
        .set_container(key, ContainerTrust::Audit.into())?;
    cx.clear_events();
    expect_runs(
        "untrusted container of an audit scope",
        chroot_exec(&root, "/bin/dyn"),
    )?;
    let events = cx.events();
    ensure!(
        events
            .iter()
            .any(|e| e.verdict == "audit" && e.reason == "untrusted_image"),
        "audit: no audit event in {events:?}"
    );
    Ok(())
}

/// Test case 6: a trusted container runs its own layers; a file from outside its image (a tmpfs
/// inside its root) follows `outside_image`.
fn case_outside_image(cx: &mut Context) -> Result<()> {
    let root = cx.fixture.interp_good.clone();
    let key = cx.fixture.layer_id("interp-upper-good")?;
    let outside = cx.fixture.outside_dir(&root)?;
    cx.backend()
        .set_container(key, ContainerTrust::Trusted.into())?;
    expect_runs("outside_image = allow", chroot_exec(&root, &outside))?;
    cx.backend().set_outside_image(OutsideImage::Deny)?;
    cx.clear_events();
    expect_eperm("outside_image = deny", chroot_exec(&root, &outside))?;
    expect_runs(
        "own layer with outside_image = deny",
        chroot_exec(&root, "/bin/dyn"),
    )?;
    let events: Vec<Decision> = cx.backend().drain_events();
    ensure!(
        events.len() == 1 && events[0].reason == "outside_image",
        "expected one outside_image event, got {events:?}"
    );
    // The container's own policy scope overrides the global setting, both ways.
    let with = |outside| imagegate::enforce::ContainerState {
        trust: ContainerTrust::Trusted,
        outside_image: Some(outside),
    };
    cx.backend().set_container(key, with(OutsideImage::Allow))?;
    expect_runs(
        "the scope allows what the global setting denies",
        chroot_exec(&root, &outside),
    )?;
    cx.backend().set_outside_image(OutsideImage::Allow)?;
    cx.backend().set_container(key, with(OutsideImage::Deny))?;
    expect_eperm(
        "the scope denies what the global setting allows",
        chroot_exec(&root, &outside),
    )?;
    Ok(())
}

/// Test case 5: `memfd_create` + `execveat` in an untrusted container is denied; in a trusted
/// one it follows `outside_image`; from the host it is out of scope.
fn case_memfd(cx: &mut Context) -> Result<()> {
    let root = cx.fixture.interp_good.clone();
    let key = cx.fixture.layer_id("interp-upper-good")?;
    let memfd = |root: &Path| -> Result<probe::Outcome> {
        let output = Command::new("/proc/self/exe")
            .args(["probe", "memfd-chroot"])
            .arg(root)
            .arg(fixture::BUSYBOX)
            .output()
            .context("running the memfd probe")?;
        probe::Outcome::from_code(output.status.code())
            .with_context(|| format!("memfd probe: {}", String::from_utf8_lossy(&output.stderr)))
    };
    ensure!(
        memfd(&root)? == probe::Outcome::Denied,
        "a memfd exec in a container not judged yet ran"
    );
    let events: Vec<Decision> = cx.backend().drain_events();
    ensure!(
        events
            .iter()
            .any(|e| e.reason == "untrusted_image" && e.container_root == Some(key)),
        "no untrusted_image event for the memfd exec: {events:?}"
    );
    cx.backend()
        .set_container(key, ContainerTrust::Trusted.into())?;
    ensure!(
        memfd(&root)? == probe::Outcome::Mapped,
        "a memfd exec in a trusted container with outside_image = allow was denied"
    );
    cx.backend().set_outside_image(OutsideImage::Deny)?;
    ensure!(
        memfd(&root)? == probe::Outcome::Denied,
        "a memfd exec in a trusted container with outside_image = deny ran"
    );
    ensure!(
        memfd(Path::new("/"))? == probe::Outcome::Mapped,
        "a host memfd exec was denied"
    );
    Ok(())
}

/// Test case 7: a host process executing through a container's root keeps the layer rule.
fn case_host_through_container(cx: &mut Context) -> Result<()> {
    let key = cx.fixture.layer_id("upper")?;
    cx.backend()
        .set_container(key, ContainerTrust::Untrusted.into())?;
    expect_runs(
        "host exec of a verified layer's file in an untrusted container's root",
        exec_true(&cx.fixture.merged.join("bin/ok")),
    )?;
    expect_eperm(
        "host exec of an unverified layer's file",
        exec_true(&cx.fixture.merged.join("bin/evil")),
    )?;
    let events = cx.events();
    let event = one_event(&events, "host")?;
    ensure!(
        event.reason == "unverified_layer" && event.container_root.is_none(),
        "unexpected event {event:?}"
    );
    Ok(())
}

fn case_table_changes(cx: &mut Context) -> Result<()> {
    let target = cx.fixture.merged.join("bin/evil");
    let unverified = cx.fixture.layer_id("unverified")?;
    expect_eperm("before adding", exec_true(&target))?;
    cx.backend().set_layer(unverified, LayerState::Verified)?;
    expect_runs("after adding to the verified table", exec_true(&target))?;
    cx.backend().remove_layer(unverified)?;
    expect_eperm("after removing", exec_true(&target))?;
    Ok(())
}

fn case_audit_layer(cx: &mut Context) -> Result<()> {
    // A layer only audit-scope images contain: allowed and reported while the node enforces.
    let target = cx.fixture.merged.join("bin/evil");
    let unverified = cx.fixture.layer_id("unverified")?;
    cx.backend().set_layer(unverified, LayerState::Audit)?;
    expect_runs("exec from an audit layer", exec_true(&target))?;
    let events = cx.events();
    let event = one_event(&events, "audit layer")?;
    ensure!(
        event.verdict == "audit" && event.layer == Some(unverified),
        "unexpected event {event:?}"
    );
    cx.backend().remove_layer(unverified)?;
    expect_eperm("after the audit mark is removed", exec_true(&target))?;
    Ok(())
}

fn case_self_test(cx: &mut Context) -> Result<()> {
    // In audit mode too: the self-test's scope always enforces.
    cx.backend().set_mode(Mode::Audit)?;
    let report =
        imagegate::enforce::selftest::run(cx.backend(), Path::new("/run/imagegate-selftest"))?;
    ensure!(
        report.deny_event.verdict == "denied",
        "self-test event {:?}",
        report.deny_event
    );
    ensure!(
        !Path::new("/run/imagegate-selftest").exists(),
        "self-test left its scratch directory"
    );
    Ok(())
}

fn imagegate_cli() -> PathBuf {
    std::env::var_os("IMAGEGATE_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/imagegate"), PathBuf::from)
}

fn our_programs() -> Result<usize> {
    let names: Vec<&str> = imagegate_common::PROGRAMS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let mut count = 0;
    for program in aya::programs::loaded_programs() {
        let program = program.context("listing loaded programs")?;
        if program
            .name_as_str()
            .is_some_and(|name| names.contains(&name))
        {
            count += 1;
        }
    }
    Ok(count)
}

/// Pinned programs of another build (another ABI version) are replaced in place: the new ones
/// come up with the old tables and mode, the old ones are detached, nothing is left behind.
fn case_upgrade(cx: &mut Context) -> Result<()> {
    use aya::maps::{Array, Map, MapData};
    use imagegate::enforce::bpf::Startup;
    use imagegate_common::{maps, Settings, ABI_VERSION};

    let evil = cx.fixture.merged.join("bin/evil");
    let ok = cx.fixture.merged.join("bin/ok");
    let verified = cx.fixture.verified_layers();
    cx.backend().set_mode(Mode::Audit)?;
    // What an older build left: its stamp differs.
    let settings_pin = Path::new(PIN_DIR).join(maps::SETTINGS);
    {
        let data = MapData::from_pin(&settings_pin)?;
        let mut settings = Array::<MapData, Settings>::try_from(Map::Array(data))?;
        let mut old = settings.get(&0, 0)?;
        old.abi = ABI_VERSION + 1;
        settings.set(0, old, 0)?;
    }
    cx.backend = None;
    let upgraded = BpfBackend::install(Path::new(PIN_DIR))?;
    ensure!(
        upgraded.startup() == Startup::Upgraded,
        "install over another ABI said {:?}",
        upgraded.startup()
    );
    cx.backend = Some(upgraded);
    ensure!(
        our_programs()? == imagegate_common::PROGRAMS.len(),
        "the old programs are still attached beside the new ones"
    );
    ensure!(
        !Path::new(&format!("{PIN_DIR}_upgrade")).exists(),
        "staging pins left behind"
    );
    let layers: Vec<LayerId> = cx.backend().layers()?.into_iter().map(|(l, _)| l).collect();
    ensure!(
        verified.iter().all(|layer| layers.contains(layer)),
        "verified layers not carried over: {layers:?}"
    );
    ensure!(
        cx.backend().settings()?.0 == Mode::Audit,
        "the mode was not carried over"
    );
    cx.backend().set_mode(Mode::Enforce)?;
    expect_runs("verified exec after the upgrade", exec_true(&ok))?;
    expect_eperm("unverified exec after the upgrade", exec_true(&evil))?;
    // Stamped now: the next start re-attaches.
    cx.backend = None;
    let again = BpfBackend::install(Path::new(PIN_DIR))?;
    ensure!(
        again.startup() == Startup::Reattached,
        "second install said {:?}",
        again.startup()
    );
    cx.backend = Some(again);
    Ok(())
}

fn case_pins(cx: &mut Context) -> Result<()> {
    let target = cx.fixture.merged.join("bin/evil");
    let ok = cx.fixture.merged.join("bin/ok");
    // Start from nothing, then let a separate process load and pin the programs.
    cx.backend = None;
    BpfBackend::uninstall(Path::new(PIN_DIR))?;
    ensure!(
        our_programs()? == 0,
        "programs still loaded after uninstall"
    );
    let scope = cx.fixture.snapshots.display().to_string();
    let mut holder = Command::new(imagegate_cli())
        .args([
            "kernel", "install", "--mode", "enforce", "--scope", &scope, "--hold",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting imagegate kernel install --hold")?;
    let mut first_line = String::new();
    {
        use std::io::BufRead as _;
        let stdout = holder.stdout.as_mut().context("holder stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut first_line)?;
    }
    ensure!(first_line.contains("Loaded"), "install said {first_line:?}");
    let verified = cx.fixture.verified_layers();
    {
        let mut backend = BpfBackend::open(
            Path::new(PIN_DIR),
            imagegate::enforce::bpf::Startup::Reattached,
        )?;
        for layer in &verified {
            backend.set_layer(*layer, LayerState::Verified)?;
        }
    }
    expect_eperm("while the loader runs", exec_true(&target))?;
    // SIGKILL: no clean-up code runs.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    holder.wait()?;
    expect_eperm("after the loader was killed", exec_true(&target))?;
    expect_runs("verified exec after the loader was killed", exec_true(&ok))?;
    ensure!(
        our_programs()? == imagegate_common::PROGRAMS.len(),
        "expected one copy of each program"
    );
    // A new process re-attaches to the pins: no duplicate programs.
    let again = Command::new(imagegate_cli())
        .args(["kernel", "install"])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&again.stdout).contains("Reattached"),
        "second install: {again:?}"
    );
    ensure!(
        our_programs()? == imagegate_common::PROGRAMS.len(),
        "re-install duplicated programs"
    );
    expect_eperm("after re-attach", exec_true(&target))?;
    // Uninstall removes pins and programs; enforcement ends.
    let uninstall = Command::new(imagegate_cli())
        .args(["kernel", "uninstall"])
        .status()?;
    ensure!(uninstall.success(), "uninstall failed");
    ensure!(!Path::new(PIN_DIR).exists(), "pins left behind");
    std::thread::sleep(Duration::from_millis(100));
    ensure!(
        our_programs()? == 0,
        "programs still loaded after uninstall"
    );
    expect_runs("after uninstall", exec_true(&target))?;
    Ok(())
}
