//! Booting a guest: QEMU with software emulation (KVM is unusable on the development machine),
//! its serial console streamed to the terminal and a log file, and a hard timeout.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{initramfs, vm_dir, Kernel};

/// What goes into a guest.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    /// Host files copied into the guest: (host path, absolute guest path). Dynamically linked
    /// executables get their shared libraries (from `ldd`, with the ELF interpreter) copied to the
    /// same paths in the guest. A directory is copied with everything below it.
    pub files: Vec<(PathBuf, String)>,
    /// Kernel modules to load, by name (e.g. "overlay"), dependencies first.
    pub modules: Vec<String>,
    /// Shell command run by `/init` after set-up; its output goes to the console.
    pub command: String,
    /// The command replaces `/init` as PID 1 (to `exec` another init, such as systemd); it must
    /// then print the exit line itself (`initramfs::EXIT_MARKER`) and power the guest off.
    pub pid1: bool,
    /// Extra kernel command line, appended to "console=ttyS0 quiet panic=-1".
    pub append: String,
    pub memory_mib: u32,
    /// Limit for the whole run, boot included.
    pub timeout: Duration,
}

impl Default for GuestSpec {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            modules: Vec::new(),
            command: String::new(),
            pid1: false,
            append: String::new(),
            memory_mib: 1024,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Builds the initramfs under `target/vm/<series>-<name>/` and boots it, streaming the console to
/// the terminal and `target/vm/<series>-<name>.log`. Returns the console output (with `\r`
/// removed); fails if QEMU cannot start, fails, or outlives `spec.timeout` (it is then killed).
/// A kernel that crashes before `/init` starts is booted again, up to [`BOOT_ATTEMPTS`] times.
pub fn run_guest(kernel: &Kernel, name: &str, spec: &GuestSpec) -> Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("guest name {name:?} must be non-empty and use only [A-Za-z0-9._-]");
    }
    let label = format!("{}-{name}", series_of(&kernel.release));
    let work = vm_dir().join(&label);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = initramfs::build(kernel, spec, &work)
        .with_context(|| format!("building the initramfs of guest {label}"))?;
    let log_path = vm_dir().join(format!("{label}.log"));
    for attempt in 1..=BOOT_ATTEMPTS {
        let output = boot(kernel, &label, spec, &initrd, &log_path)?;
        if attempt == BOOT_ATTEMPTS || !crashed_before_init(&output) {
            return Ok(output);
        }
        // The kernel died in its own start-up, before `/init` (and so anything under test) ran:
        // an emulator fault (see BOOT_ATTEMPTS). Keep that console and boot again.
        let kept = vm_dir().join(format!("{label}.boot-crash-{attempt}.log"));
        fs::rename(&log_path, &kept)
            .with_context(|| format!("keeping {} as {}", log_path.display(), kept.display()))?;
        eprintln!(
            "xtask: guest {label} crashed while booting, before /init ran (console in {}); \
             booting again, attempt {} of {BOOT_ATTEMPTS}",
            kept.display(),
            attempt + 1
        );
    }
    unreachable!("the last attempt returns")
}

/// How often a guest is booted when its kernel crashes before `/init` starts. Under QEMU's
/// software emulation a 6.12 kernel has been seen (once in tens of boots, in CI) to die of
/// "Oops: int3" in an initcall: a vCPU ran a breakpoint the kernel's live code patching had
/// already removed. Nothing of ours has run by then, so booting again is sound; a crash after
/// `/init` started is never retried, and guests run single-threaded TCG (see [`boot`]) so that
/// code patching is seen by every vCPU at once.
const BOOT_ATTEMPTS: u32 = 3;

/// Whether the console shows a kernel crash and no sign of `/init`.
fn crashed_before_init(output: &str) -> bool {
    !output.contains(initramfs::START_MARKER)
        && (output.contains("Kernel panic") || output.contains("Oops:"))
}

/// One boot of the guest: QEMU started, its console streamed, waited for under the timeout.
fn boot(
    kernel: &Kernel,
    label: &str,
    spec: &GuestSpec,
    initrd: &Path,
    log_path: &Path,
) -> Result<String> {
    let log =
        fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let append = format!("console=ttyS0 quiet panic=-1 {}", spec.append);
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            // One host thread runs every vCPU in turn. With a thread per vCPU (QEMU's default),
            // a vCPU can keep running code another vCPU just rewrote (the kernel patches its own
            // text for static keys and BPF trampolines), which crashed guests with "Oops: int3".
            // It costs about 15% of guest time here (6.12 fanotify suite: 25.0 s -> 29.4 s);
            // processes still interleave on two CPUs, as the parallel-exec tests need.
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-m", &spec.memory_mib.to_string()])
        // No NIC: the guests need only loopback, and iPXE's option ROM costs ~1 s of boot.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append.trim_end()])
        // A terminal on stdin would be switched to raw mode and could steer the monitor.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!(
        "xtask: booting {label} ({}), log in {}",
        kernel.release,
        log_path.display()
    );
    let started = Instant::now();
    let mut child = command.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let stderr = child.stderr.take().context("qemu has no stderr")?;
    let console = thread::spawn(move || stream_console(stdout, log));
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });

    let waited = wait_or_kill(&mut child, spec.timeout);
    // Both pipes close once QEMU is gone, so the readers finish.
    let console = console
        .join()
        .map_err(|_| anyhow::anyhow!("console reader panicked"))?;
    let errors = errors.join().unwrap_or_default();
    let output = String::from_utf8_lossy(&console?).replace('\r', "");
    let elapsed = started.elapsed().as_secs_f64();
    match waited? {
        None => bail!(
            "guest {label} timed out after {:?} (qemu killed); console in {}",
            spec.timeout,
            log_path.display()
        ),
        Some(status) if !status.success() => bail!(
            "qemu-system-x86_64 for guest {label} failed: {status}: {}; console in {}",
            errors.trim(),
            log_path.display()
        ),
        Some(_) => {
            eprintln!("xtask: guest {label} ran {elapsed:.1} s");
            Ok(output)
        }
    }
}

/// Waits for `child` until `timeout`; on timeout kills it by pid and returns `None`.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // SIGKILL to the pid we spawned; then reap it.
            child
                .kill()
                .with_context(|| format!("killing qemu (pid {})", child.id()))?;
            child
                .wait()
                .with_context(|| format!("reaping qemu (pid {})", child.id()))?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Copies the console to the terminal and the log as it arrives, and returns all of it, without
/// escape sequences: SeaBIOS resets the terminal and turns off line wrapping.
fn stream_console(mut from: impl io::Read, mut log: fs::File) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buffer = [0u8; 8192];
    let mut chunk = Vec::with_capacity(buffer.len());
    let mut filter = EscapeFilter::default();
    let mut terminal = io::stdout();
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).context("reading the qemu console"),
        };
        chunk.clear();
        chunk.extend(buffer[..read].iter().filter(|&&byte| filter.keep(byte)));
        let chunk = chunk.as_slice();
        all.extend_from_slice(chunk);
        // The terminal is best effort (it may be a closed pipe); the log is not.
        let _ = terminal.write_all(chunk).and_then(|()| terminal.flush());
        log.write_all(chunk).context("writing the console log")?;
    }
    Ok(all)
}

/// Drops ANSI escape sequences (`ESC c`, `ESC [ ... final`) from a byte stream, across reads.
#[derive(Default)]
enum EscapeFilter {
    #[default]
    Text,
    Escape,
    ControlSequence,
}

impl EscapeFilter {
    fn keep(&mut self, byte: u8) -> bool {
        match (&*self, byte) {
            (Self::Text, 0x1b) => *self = Self::Escape,
            (Self::Text, _) => return true,
            (Self::Escape, b'[') => *self = Self::ControlSequence,
            (Self::Escape, _) | (Self::ControlSequence, 0x40..=0x7e) => *self = Self::Text,
            (Self::ControlSequence, _) => {}
        }
        false
    }
}

/// `6.12` from `6.12.115+deb12-cloud-amd64`, `6.1` from `6.1.0-56-cloud-amd64`.
fn series_of(release: &str) -> String {
    release.split('.').take(2).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_escape_sequences() {
        let mut filter = EscapeFilter::default();
        let raw = b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\nBooting..\x1bc\x1b[?7l1 passed";
        let kept: Vec<u8> = raw
            .iter()
            .copied()
            .filter(|&byte| filter.keep(byte))
            .collect();
        assert_eq!(kept, b"SeaBIOS\r\nBooting..1 passed");
        assert_eq!(series_of("6.1.0-56-cloud-amd64"), "6.1");
        assert_eq!(series_of("6.12.117+deb12-cloud-amd64"), "6.12");
    }

    #[test]
    fn only_a_crash_before_init_is_booted_again() {
        // Cut from the CI console of a 6.12 guest that died in an initcall.
        let boot_crash =
            "Booting from ROM...\n[    3.709636] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
            [    3.717652] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(crashed_before_init(boot_crash));
        let test_crash = format!(
            "Booting from ROM...\n{} 6.33\nrunning 1 test\n[   20.1] Oops: int3: 0000 [#1]\n",
            initramfs::START_MARKER
        );
        assert!(
            !crashed_before_init(&test_crash),
            "a crash under test is a failure"
        );
        assert!(
            !crashed_before_init("Booting from ROM...\n"),
            "a hang is not a crash"
        );
    }
}
