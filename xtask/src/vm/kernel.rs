//! Debian cloud kernels for the guests: resolved with `apt-cache`, fetched with `apt-get download`
//! and unpacked with `dpkg-deb -x`, all cached under `target/vm/`.
//!
//! Versions are never hard-coded: Debian publishes kernel updates under new package names and
//! drops old ones from the mirror, so the newest package of a series is looked up every time.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{bail, Context as _, Result};

use super::{vm_dir, KernelSeries};
use crate::setup::{output, run_command};

/// A Debian cloud kernel unpacked under `target/vm/kernels/<package>/` (cached, idempotent).
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` in the guest, e.g. `6.12.115+deb12-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

/// Resolves the newest package of `series` with `apt-cache search`, downloads it into
/// `target/vm/downloads/` unless already there, and unpacks it unless already unpacked.
pub fn fetch_kernel(series: KernelSeries) -> Result<Kernel> {
    let package = match newest_package(series)? {
        Some(package) => package,
        None => {
            // A fresh machine may have no package lists yet.
            eprintln!(
                "xtask: no {series} cloud kernel in the package lists; running apt-get update"
            );
            run_command(Command::new("apt-get").args(["update", "-q"]))?;
            newest_package(series)?.with_context(|| {
                format!("apt-cache finds no Debian {series} cloud kernel package")
            })?
        }
    };
    let unpacked = vm_dir().join("kernels").join(&package);
    if !unpacked.is_dir() {
        let deb = download(&package)?;
        unpack(&deb, &unpacked)?;
    }
    let kernel = kernel_in(&unpacked)?;
    depmod(&unpacked, &kernel)?;
    Ok(kernel)
}

/// Generates `modules.dep`, which the package leaves to its post-install script, once.
fn depmod(root: &Path, kernel: &Kernel) -> Result<()> {
    if kernel.modules_dir.join("modules.dep").is_file() {
        return Ok(());
    }
    run_command(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.release),
    )
}

/// The newest `linux-image-*-cloud-amd64-unsigned` package of `series` known to apt, if any.
fn newest_package(series: KernelSeries) -> Result<Option<String>> {
    let pattern = match series {
        KernelSeries::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        KernelSeries::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
    };
    let found = output(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
    Ok(found
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((package_rank(series, name)?, name)))
        .max()
        .map(|(_, name)| name.to_owned()))
}

/// The number that orders packages of one series: the ABI number of 6.1 (`6.1.0-<N>-cloud...`),
/// the patch level of 6.12 (`6.12.<N>+deb12-cloud...`). `None` for names of another shape.
fn package_rank(series: KernelSeries, name: &str) -> Option<u32> {
    let rest = name.strip_suffix("-cloud-amd64-unsigned")?;
    let number = match series {
        KernelSeries::V6_1 => rest.strip_prefix("linux-image-6.1.0-")?,
        KernelSeries::V6_12 => rest
            .strip_prefix("linux-image-6.12.")?
            .strip_suffix("+deb12")?,
    };
    number.parse().ok()
}

/// `apt-get download`s `package` into `target/vm/downloads/`, or finds it there already.
fn download(package: &str) -> Result<PathBuf> {
    let downloads = vm_dir().join("downloads");
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    if let Some(deb) = find_deb(&downloads, package)? {
        return Ok(deb);
    }
    eprintln!("xtask: downloading {package}");
    // As root, apt fetches as the `_apt` user, which cannot write into the workspace, and warns.
    run_command(
        Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(&downloads),
    )?;
    find_deb(&downloads, package)?.with_context(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            downloads.display()
        )
    })
}

/// The `<package>_<version>_amd64.deb` in `dir`, if present (the version is not known up front).
fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Unpacks `deb` into `dest` through a temporary directory, so an interrupted run never leaves a
/// half-unpacked kernel that later runs would take as cached, and concurrent runs do not collide.
fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    static UNPACKS: AtomicUsize = AtomicUsize::new(0);
    let unique = format!(
        "partial-{}-{}",
        std::process::id(),
        UNPACKS.fetch_add(1, Ordering::Relaxed)
    );
    let partial = dest.with_extension(unique);
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    run_command(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    match fs::rename(&partial, dest) {
        Ok(()) => Ok(()),
        // Another run got there first with the same package.
        Err(_) if dest.is_dir() => {
            fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))
        }
        Err(error) => Err(error)
            .with_context(|| format!("renaming {} to {}", partial.display(), dest.display())),
    }
}

/// Finds the release, `vmlinuz` and modules of the kernel unpacked in `root`.
fn kernel_in(root: &Path) -> Result<Kernel> {
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("no lib/modules in {}", root.display()))?;
    let mut releases = Vec::new();
    for entry in fs::read_dir(&modules).with_context(|| format!("reading {}", modules.display()))? {
        let entry = entry.with_context(|| format!("reading {}", modules.display()))?;
        releases.push(entry.file_name().to_string_lossy().into_owned());
    }
    let [release] = releases.as_slice() else {
        bail!(
            "expected one kernel release in {}, found {releases:?}",
            modules.display()
        );
    };
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} is missing", vmlinuz.display());
    }
    Ok(Kernel {
        release: release.clone(),
        modules_dir: modules.join(release),
        vmlinuz,
    })
}

/// A loadable module file, relative to the kernel's modules directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleFile(pub String);

impl ModuleFile {
    /// The path without its compression suffix (`.ko.xz` → `.ko`): what `insmod` gets.
    pub fn uncompressed(&self) -> &str {
        [".xz", ".zst", ".gz"]
            .iter()
            .find_map(|suffix| self.0.strip_suffix(suffix))
            .unwrap_or(&self.0)
    }

    /// Writes the module, decompressed, to `dest`: busybox `insmod` cannot decompress.
    pub fn decompress_to(&self, kernel: &Kernel, dest: &Path) -> Result<()> {
        let source = kernel.modules_dir.join(&self.0);
        let tool = match self.0.rsplit('.').next() {
            Some("xz") => "xz",
            Some("zst") => "zstd",
            Some("gz") => "gzip",
            _ => {
                return fs::copy(&source, dest).map(drop).with_context(|| {
                    format!("copying {} to {}", source.display(), dest.display())
                });
            }
        };
        let out = fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        let status = Command::new(tool)
            .args(["-d", "-c"])
            .arg(&source)
            .stdout(out)
            .status()
            .with_context(|| format!("starting {tool} -d -c {}", source.display()))?;
        if !status.success() {
            bail!("{tool} -d -c {} failed: {status}", source.display());
        }
        Ok(())
    }
}

/// The module files to load, dependencies first, for the named modules, from `modules.dep`.
/// Modules built into the kernel (`modules.builtin`) need no file and are skipped.
pub fn module_load_order(kernel: &Kernel, names: &[String]) -> Result<Vec<ModuleFile>> {
    let dep_path = kernel.modules_dir.join("modules.dep");
    let dep_text =
        fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    let deps: HashMap<&str, Vec<&str>> = dep_text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, needs)| (module.trim(), needs.split_whitespace().collect()))
        .collect();
    let builtin_path = kernel.modules_dir.join("modules.builtin");
    let builtin = fs::read_to_string(&builtin_path).unwrap_or_default();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for name in names {
        if let Some(file) = deps
            .keys()
            .find(|file| module_name(file) == normalise(name))
        {
            visit(file, &deps, &mut seen, &mut order, 0)?;
        } else if !builtin
            .lines()
            .any(|file| module_name(file) == normalise(name))
        {
            bail!(
                "kernel {} has no module {name:?} ({})",
                kernel.release,
                dep_path.display()
            );
        }
    }
    Ok(order)
}

/// Depth-first walk of `modules.dep` that appends each module after its dependencies.
fn visit<'a>(
    file: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    seen: &mut HashSet<&'a str>,
    order: &mut Vec<ModuleFile>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        bail!("modules.dep: dependency chain through {file} is too deep (a cycle?)");
    }
    if !seen.insert(file) {
        return Ok(());
    }
    for need in deps.get(file).into_iter().flatten() {
        visit(need, deps, seen, order, depth + 1)?;
    }
    order.push(ModuleFile(file.to_owned()));
    Ok(())
}

/// `kernel/fs/overlayfs/overlay.ko.xz` → `overlay`, with `-` folded to `_` as modprobe does.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    normalise(base.split(".ko").next().unwrap_or(base))
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_only_packages_of_the_series() {
        let v612 = "linux-image-6.12.117+deb12-cloud-amd64-unsigned";
        let v61 = "linux-image-6.1.0-56-cloud-amd64-unsigned";
        assert_eq!(package_rank(KernelSeries::V6_12, v612), Some(117));
        assert_eq!(package_rank(KernelSeries::V6_1, v612), None);
        assert_eq!(package_rank(KernelSeries::V6_1, v61), Some(56));
        assert_eq!(package_rank(KernelSeries::V6_12, v61), None);
        assert_eq!(
            package_rank(KernelSeries::V6_1, "linux-image-6.1.0-56-amd64-unsigned"),
            None
        );
    }

    #[test]
    fn module_names_and_suffixes() {
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.xz"), "overlay");
        assert_eq!(module_name("kernel/net/x/nf-nat.ko"), "nf_nat");
        assert_eq!(ModuleFile("a/b.ko.zst".into()).uncompressed(), "a/b.ko");
        assert_eq!(ModuleFile("a/b.ko".into()).uncompressed(), "a/b.ko");
    }
}
