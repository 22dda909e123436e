//! Thin, safe wrappers over the syscalls the backend needs: the fanotify group (init, marks,
//! events, responses), file handles (to turn a backing file into a host path) and `openat2`
//! (to look a path up inside one layer without following symlinks out of it).
//!
//! nix's fanotify types close event fds on drop and borrow them, which does not fit a pool where
//! a timer and a worker may both hold an event; these keep the fd in an `OwnedFd`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

/// A `FAN_CLASS_CONTENT` fanotify group.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

/// One event read from the group.
#[derive(Debug)]
pub struct RawEvent {
    /// Event mask (`FAN_OPEN_EXEC_PERM`, `FAN_Q_OVERFLOW`).
    pub mask: u64,
    /// The file, opened by the kernel for us; `None` for `FAN_NOFD` (overflow).
    pub fd: Option<OwnedFd>,
    /// Thread group id of the process that triggered it.
    pub pid: i32,
}

/// What a file system mark is placed through: an open fd on it, or a path on it.
#[derive(Clone, Copy, Debug)]
pub enum MarkAt<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Group {
    /// `fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE)`.
    /// The queue must be unlimited: the kernel allows a permission event it cannot queue.
    pub fn new() -> io::Result<Self> {
        let flags = libc::FAN_CLASS_CONTENT
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_UNLIMITED_QUEUE;
        let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: plain syscall; the returned fd is owned from here on.
        let fd = check(unsafe { libc::fanotify_init(flags, event_flags) })?;
        // SAFETY: fd was just returned by the kernel and is not owned elsewhere.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn mark(
        &self,
        flags: libc::c_uint,
        mask: u64,
        dirfd: RawFd,
        path: Option<&Path>,
    ) -> io::Result<()> {
        let path = path.map(cstring).transpose()?;
        let path_ptr = path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
        // SAFETY: path_ptr is null or a valid NUL-terminated string that outlives the call.
        check(unsafe { libc::fanotify_mark(self.fd.as_raw_fd(), flags, mask, dirfd, path_ptr) })
            .map(drop)
    }

    /// Asks for (`add`) or stops exec permission events on everything in the file system
    /// holding `at` (`FAN_MARK_FILESYSTEM`).
    pub fn mark_filesystem(&self, add: bool, at: MarkAt<'_>) -> io::Result<()> {
        let flags = if add {
            libc::FAN_MARK_ADD
        } else {
            libc::FAN_MARK_REMOVE
        } | libc::FAN_MARK_FILESYSTEM;
        match at {
            MarkAt::Fd(fd) => self.mark(flags, libc::FAN_OPEN_EXEC_PERM, fd.as_raw_fd(), None),
            MarkAt::Path(path) => {
                self.mark(flags, libc::FAN_OPEN_EXEC_PERM, libc::AT_FDCWD, Some(path))
            }
        }
    }

    /// An exec permission mark on the inode behind `fd` (the capability probe uses a directory,
    /// which nobody execs).
    pub fn mark_inode_exec(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_EXEC_PERM,
            fd.as_raw_fd(),
            None,
        )
    }

    /// An exec permission mark on the inode at `path` (a container runtime binary).
    pub fn mark_inode_path_exec(&self, path: &Path) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_EXEC_PERM,
            libc::AT_FDCWD,
            Some(path),
        )
    }

    /// Tells the kernel to stop asking about the inode behind `fd` until it is written to
    /// (no `FAN_MARK_IGNORED_SURV_MODIFY`: a modification clears the ignore mark).
    pub fn ignore_inode(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK,
            libc::FAN_OPEN_EXEC_PERM,
            fd.as_raw_fd(),
            None,
        )
    }

    /// Removes an ignore mark placed by [`Group::ignore_inode`] (a stale decision).
    pub fn unignore_inode(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.mark(
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_IGNORED_MASK,
            libc::FAN_OPEN_EXEC_PERM,
            fd.as_raw_fd(),
            None,
        )
    }

    /// Removes every inode mark of the group: all ignore marks. File system marks stay.
    pub fn flush_inode_marks(&self) -> io::Result<()> {
        self.mark(libc::FAN_MARK_FLUSH, 0, libc::AT_FDCWD, None)
    }

    /// Reads whatever events are queued (non-blocking; empty when none).
    pub fn read_events(&self, buffer: &mut [u8]) -> io::Result<Vec<RawEvent>> {
        // SAFETY: buffer is valid for writes of its length.
        let read = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if read < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::WouldBlock {
                Ok(Vec::new())
            } else {
                Err(error)
            };
        }
        Ok(parse_events(&buffer[..read as usize]))
    }

    /// Answers the permission event whose fd is `fd`.
    pub fn respond(&self, fd: BorrowedFd<'_>, allow: bool) -> io::Result<()> {
        let response = libc::fanotify_response {
            fd: fd.as_raw_fd(),
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        let size = size_of::<libc::fanotify_response>();
        // SAFETY: response is a plain repr(C) struct of `size` bytes.
        let written =
            unsafe { libc::write(self.fd.as_raw_fd(), (&raw const response).cast(), size) };
        if written < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// For `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.fd.as_fd()
    }
}

/// Splits a read buffer into events, taking ownership of their fds. Malformed records end the
/// parse (the kernel never writes them; a truncated tail is impossible with whole-event reads).
fn parse_events(mut bytes: &[u8]) -> Vec<RawEvent> {
    let header = size_of::<libc::fanotify_event_metadata>();
    let mut events = Vec::new();
    while bytes.len() >= header {
        // SAFETY: at least `header` bytes remain; the read is unaligned.
        let meta: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let len = meta.event_len as usize;
        if len < header || len > bytes.len() || meta.vers != libc::FANOTIFY_METADATA_VERSION {
            break;
        }
        let fd = (meta.fd >= 0).then(|| {
            // SAFETY: the kernel installed this fd for us; nobody else owns it.
            unsafe { OwnedFd::from_raw_fd(meta.fd) }
        });
        events.push(RawEvent {
            mask: meta.mask,
            fd,
            pid: meta.pid,
        });
        bytes = &bytes[len..];
    }
    events
}

/// Waits up to `timeout_ms` for `events` (`POLLIN`, `POLLPRI`) on `fd`; whether it is ready.
/// `EINTR` counts as not ready.
pub fn poll_one(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&raw mut pollfd, 1, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(error)
        };
    }
    Ok(ready > 0)
}

/// `fstat` of an fd.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid for writes; fstat fills it on success.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by a successful fstat.
    Ok(unsafe { st.assume_init() })
}

/// `statfs(2)` file system magic of an fd's file system.
pub fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: st is valid for writes.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by a successful fstatfs.
    Ok(unsafe { st.assume_init() }.f_type)
}

/// Where `/proc/self/fd/<fd>` points.
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Reopens the file behind `fd` through the mount of `mount_fd` (same file system), `O_PATH`.
/// The result's `/proc/self/fd` link is the file's path as seen through that mount: the way to
/// get a host path for a backing file whose own path is relative to a private layer mount.
pub fn reopen_via_mount(fd: BorrowedFd<'_>, mount_fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_by_handle(&crate::enforce::file_handle::FileHandle::of(fd)?, mount_fd)
}

/// Opens the file `handle` names (`O_PATH`) through `mount_fd`'s mount.
pub fn open_by_handle(
    handle: &crate::enforce::file_handle::FileHandle,
    mount_fd: BorrowedFd<'_>,
) -> io::Result<OwnedFd> {
    // The kernel only reads the handle; the call takes it mutable.
    let mut handle = handle.clone();
    // SAFETY: handle was filled by name_to_handle_at.
    let opened = check(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a new fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(opened) })
}

/// `open(path, O_RDONLY | O_DIRECTORY)`: a directory fd usable as `open_by_handle_at`'s mount fd
/// (which refuses `O_PATH` fds) and as an `openat2` base.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    // SAFETY: valid C string.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a new fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `relative` below `dir` with `O_PATH`, refusing symlinks, `..` escapes and mount
/// crossings: what a layer directory itself holds at that path, nothing it points to.
pub fn open_beneath(dir: BorrowedFd<'_>, relative: &Path) -> io::Result<OwnedFd> {
    let path = cstring(relative)?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_XDEV,
    };
    // SAFETY: openat2 with a valid C string and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd from the kernel (fits in c_int).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The running kernel's `(major, minor)` release, from `uname`.
#[must_use]
pub fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Runs the calling thread at nice -10: the threads that answer exec permission events must
/// not be starved by the very exec storms they gate (every waiting exec sleeps on them).
/// Best effort: without `CAP_SYS_NICE` the thread keeps its priority.
pub fn raise_thread_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
    }
}

/// Raises the soft open-file limit to the hard one: every queued event holds an fd, and the
/// kernel denies a permission event whose fd it cannot install.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is valid for writes; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0
            && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_stops_at_garbage() {
        let meta = libc::fanotify_event_metadata {
            event_len: size_of::<libc::fanotify_event_metadata>() as u32,
            vers: libc::FANOTIFY_METADATA_VERSION,
            reserved: 0,
            metadata_len: size_of::<libc::fanotify_event_metadata>() as u16,
            mask: libc::FAN_Q_OVERFLOW,
            fd: libc::FAN_NOFD,
            pid: 42,
        };
        // SAFETY: viewing a plain repr(C) struct as bytes.
        let one = unsafe {
            std::slice::from_raw_parts(
                (&raw const meta).cast::<u8>(),
                size_of::<libc::fanotify_event_metadata>(),
            )
        };
        let mut bytes = one.to_vec();
        bytes.extend_from_slice(one);
        bytes.extend_from_slice(&[1, 2, 3]);
        let events = parse_events(&bytes);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].pid, 42);
        assert!(events[0].fd.is_none());
        let mut bad = one.to_vec();
        bad[0] = 1; // event_len shorter than the header
        assert!(parse_events(&bad).is_empty());
    }

    #[test]
    fn kernel_version_is_parsed() {
        let (major, _) = kernel_version();
        assert!(major >= 5);
    }
}
