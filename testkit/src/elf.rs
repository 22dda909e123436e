//! The shared libraries a dynamically linked executable loads, so it can be copied somewhere
//! without its host (a guest's initramfs, a container image).

use std::{io::Read as _, path::Path, process::Command};

use crate::{io, Error, Result};

/// The shared libraries and ELF interpreter `ldd` resolves for `file`; none for non-ELF files
/// and static executables. A library `ldd` cannot find is an error.
pub fn shared_libraries(file: &Path) -> Result<Vec<String>> {
    let mut magic = [0u8; 4];
    let is_elf = std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF");
    if !is_elf {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(file)
        .output()
        .map_err(io(format!("starting ldd {}", file.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(Error::Ldd(format!(
            "ldd {} failed: {}: {}",
            file.display(),
            out.status,
            stderr.trim()
        )));
    }
    let mut libraries = Vec::new();
    for line in stdout.lines().map(str::trim) {
        if line.contains("not found") {
            return Err(Error::Ldd(format!(
                "ldd {}: missing shared library: {line}",
                file.display()
            )));
        }
        // "libc.so.6 => /lib/.../libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
        // "linux-vdso.so.1 (0x...)" and "statically linked" name no file.
        let path = line.split_once("=>").map_or(line, |(_, path)| path.trim());
        let path = path.split(" (").next().unwrap_or(path).trim();
        if path.starts_with('/') {
            libraries.push(path.to_owned());
        }
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shared_libraries_of_a_dynamic_executable() -> Result<()> {
        let libraries = shared_libraries(Path::new("/bin/sh"))?;
        assert!(
            libraries.iter().any(|lib| lib.contains("libc.so")),
            "{libraries:?}"
        );
        assert!(
            libraries.iter().any(|lib| lib.contains("ld-linux")),
            "{libraries:?}"
        );
        assert!(shared_libraries(Path::new("/etc/hostname"))?.is_empty());
        Ok(())
    }
}
