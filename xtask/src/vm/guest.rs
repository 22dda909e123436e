//! Booting a guest: QEMU with software emulation (KVM is unusable on the development machine),
//! its serial console streamed to the terminal and a log file, and a hard timeout.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    path::PathBuf,
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
            append: String::new(),
            memory_mib: 1024,
            timeout: Duration::from_secs(300),
        }
    }
}

/// Builds the initramfs under `target/vm/<series>-<name>/` and boots it, streaming the console to
/// the terminal and `target/vm/<series>-<name>.log`. Returns the console output (with `\r`
/// removed); fails if QEMU cannot start, fails, or outlives `spec.timeout` (it is then killed).
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
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let append = format!("console=ttyS0 quiet panic=-1 {}", spec.append);
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            "tcg",
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
        .arg(&initrd)
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
}
