//! The mapping probe: run from a verified layer, it maps a library executable one way and exits
//! 0 (mapped) or 13 (the kernel refused with EPERM/EACCES). Anything else is a test error.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

const MAPPED: i32 = 0;
const DENIED: i32 = 13;
const ERROR: i32 = 2;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Mapped,
    Denied,
}

impl Outcome {
    pub fn from_code(code: Option<i32>) -> anyhow::Result<Self> {
        match code {
            Some(MAPPED) => Ok(Self::Mapped),
            Some(DENIED) => Ok(Self::Denied),
            other => anyhow::bail!("probe failed with {other:?}"),
        }
    }
}

fn refused(errno: i32) -> i32 {
    if errno == libc::EPERM || errno == libc::EACCES {
        DENIED
    } else {
        ERROR
    }
}

pub fn run(args: &[String]) -> i32 {
    let (Some(how), path) = (args.first(), args.get(1)) else {
        return ERROR;
    };
    if how == "noop" {
        return MAPPED;
    }
    if how == "memfd-chroot" {
        return memfd_chroot(args.get(1), args.get(2));
    }
    let Some(path) = path else { return ERROR };
    let Ok(c_path) = CString::new(Path::new(path).as_os_str().as_bytes()) else {
        return ERROR;
    };
    // SAFETY: plain libc calls on a path we own; every result is checked.
    unsafe {
        match how.as_str() {
            "dlopen" => {
                let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW);
                if handle.is_null() {
                    let message = std::ffi::CStr::from_ptr(libc::dlerror())
                        .to_string_lossy()
                        .into_owned();
                    eprintln!("dlopen: {message}");
                    if message.contains("Operation not permitted")
                        || message.contains("failed to map segment")
                    {
                        DENIED
                    } else {
                        ERROR
                    }
                } else {
                    MAPPED
                }
            }
            "mmap" | "mprotect" => {
                let fd = libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return ERROR;
                }
                let prot = if how == "mmap" {
                    libc::PROT_READ | libc::PROT_EXEC
                } else {
                    libc::PROT_READ
                };
                let addr = libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE, fd, 0);
                if addr == libc::MAP_FAILED {
                    return refused(*libc::__errno_location());
                }
                if how == "mmap" {
                    return MAPPED;
                }
                if libc::mprotect(addr, 4096, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                    return refused(*libc::__errno_location());
                }
                MAPPED
            }
            _ => ERROR,
        }
    }
}

/// `memfd-chroot ROOT BINARY`: copies a static busybox into an anonymous `memfd_create` file,
/// moves into `ROOT` (as a container's process would be) and executes the memfd as `true`:
/// exit 0 when it ran, 13 when the kernel refused the exec.
fn memfd_chroot(root: Option<&String>, binary: Option<&String>) -> i32 {
    let (Some(root), Some(binary)) = (root, binary) else {
        return ERROR;
    };
    let Ok(bytes) = std::fs::read(binary) else {
        return ERROR;
    };
    let Ok(name) = CString::new("payload") else {
        return ERROR;
    };
    // SAFETY: plain libc calls; every result is checked; exec replaces the process on success.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), 0);
        if fd < 0 {
            return ERROR;
        }
        if libc::write(fd, bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
            return ERROR;
        }
        if nix::unistd::chroot(root.as_str()).is_err() || nix::unistd::chdir("/").is_err() {
            return ERROR;
        }
        let arg0 = c"true";
        let argv = [arg0.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        refused(*libc::__errno_location())
    }
}
