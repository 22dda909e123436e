//! Watching containerd's content store through the kernel: a fanotify notification group with
//! directory-entry reporting (`FAN_REPORT_DFID_NAME`, Linux 5.9+) on
//! `io.containerd.content.v1.content/blobs/sha256`. containerd writes each blob under `ingest/`
//! and renames it into that directory when its digest checks out, so every `FAN_MOVED_TO` (or
//! `FAN_CREATE`) there is a new blob, named by its hex digest. The daemon learns of a manifest
//! the moment it lands, before the image record exists (containerd creates that only after every
//! layer is fetched), and can fetch and verify its signatures while the layers download.
//!
//! Notification only (`FAN_CLASS_NOTIF`): nothing waits for this watcher, so it can never stall
//! containerd; a lost event only means the verification starts later, at the image event.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use tokio::io::unix::AsyncFd;

/// The content store's blob directory under containerd's root.
#[must_use]
pub fn blob_dir(containerd_root: &Path) -> PathBuf {
    containerd_root.join("io.containerd.content.v1.content/blobs/sha256")
}

/// Why the watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME) failed (Linux 5.9+, CAP_SYS_ADMIN)"
    )]
    Init(#[source] std::io::Error),
    #[error("marking {dir} for directory-entry events")]
    Mark {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registering the fanotify descriptor with the runtime")]
    Register(#[source] std::io::Error),
}

// Not all of these are in the libc crate for every target; values from linux/fanotify.h.
const FAN_REPORT_DIR_FID: u32 = 0x0000_0400;
const FAN_REPORT_NAME: u32 = 0x0000_0800;
const FAN_CREATE: u64 = 0x0000_0100;
const FAN_MOVED_TO: u64 = 0x0000_0080;
const FAN_EVENT_INFO_TYPE_DFID_NAME: u8 = 2;
const METADATA_LEN: usize = 24;
const INFO_HEADER_LEN: usize = 4;
const FSID_LEN: usize = 8;
const HANDLE_HEADER_LEN: usize = 8;

/// A watch on one blob directory.
pub struct ContentWatch {
    fd: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl ContentWatch {
    /// Marks `dir` (which must exist) for new entries. Call inside a tokio runtime.
    pub fn new(dir: &Path) -> Result<Self, WatchError> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | FAN_REPORT_DIR_FID
            | FAN_REPORT_NAME;
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) };
        if raw < 0 {
            return Err(WatchError::Init(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path =
            CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| WatchError::Mark {
                dir: dir.to_owned(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })?;
        // SAFETY: valid descriptor and NUL-terminated path.
        let marked = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD,
                FAN_CREATE | FAN_MOVED_TO,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if marked < 0 {
            return Err(WatchError::Mark {
                dir: dir.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| WatchError::Register(e.into_parts().1))?;
        Ok(Self {
            fd,
            buffer: vec![0; 16 * 1024],
        })
    }

    /// The digests (`sha256:<hex>`) of the blobs that landed since the last call; waits for at
    /// least one read. An error means the watch is broken (the caller stops using it).
    pub async fn next(&mut self) -> std::io::Result<Vec<String>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                // SAFETY: reading into our own buffer of the stated length.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        self.buffer.as_mut_ptr().cast(),
                        self.buffer.len(),
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(n)) => return Ok(parse_names(&self.buffer[..n])),
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Blob digests named by a buffer of fanotify events with `DFID_NAME` records. Malformed
/// records end the parse (what was read so far is kept); names that are not 64 hex digits
/// (containerd's temporary files, if any) are skipped.
fn parse_names(buffer: &[u8]) -> Vec<String> {
    let mut digests = Vec::new();
    let mut at = 0;
    while buffer.len() - at >= METADATA_LEN {
        let event_len =
            u32::from_ne_bytes([buffer[at], buffer[at + 1], buffer[at + 2], buffer[at + 3]])
                as usize;
        let metadata_len = u16::from_ne_bytes([buffer[at + 6], buffer[at + 7]]) as usize;
        if event_len < METADATA_LEN || at + event_len > buffer.len() || metadata_len > event_len {
            break;
        }
        let event = &buffer[at..at + event_len];
        let mut info = metadata_len;
        while event.len() - info >= INFO_HEADER_LEN {
            let kind = event[info];
            let len = u16::from_ne_bytes([event[info + 2], event[info + 3]]) as usize;
            if len < INFO_HEADER_LEN || info + len > event.len() {
                break;
            }
            if kind == FAN_EVENT_INFO_TYPE_DFID_NAME {
                if let Some(name) = record_name(&event[info..info + len]) {
                    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                        digests.push(format!("sha256:{name}"));
                    }
                }
            }
            info += len;
        }
        at += event_len;
    }
    digests
}

/// The name at the end of a `DFID_NAME` record: header, fsid, file handle, NUL-terminated name.
fn record_name(record: &[u8]) -> Option<&str> {
    let handle = INFO_HEADER_LEN + FSID_LEN;
    let bytes = record.get(handle..handle + 4)?;
    let handle_bytes = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let name = record.get(handle + HANDLE_HEADER_LEN + handle_bytes..)?;
    let end = name.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&name[..end]).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One event as the kernel lays it out: metadata, then a DFID_NAME record.
    fn event(name: &str) -> Vec<u8> {
        let handle = [7u8; 8];
        let mut record = vec![FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 0, 0];
        record.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]); // fsid
        record.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        record.extend_from_slice(&1i32.to_ne_bytes());
        record.extend_from_slice(&handle);
        record.extend_from_slice(name.as_bytes());
        record.push(0);
        while record.len() % 4 != 0 {
            record.push(0);
        }
        let record_len = record.len() as u16;
        record[2..4].copy_from_slice(&record_len.to_ne_bytes());
        let mut meta = Vec::new();
        let total = (METADATA_LEN + record.len()) as u32;
        meta.extend_from_slice(&total.to_ne_bytes());
        meta.extend_from_slice(&[3, 0]);
        meta.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        meta.extend_from_slice(&FAN_MOVED_TO.to_ne_bytes());
        meta.extend_from_slice(&(-1i32).to_ne_bytes());
        meta.extend_from_slice(&1234i32.to_ne_bytes());
        meta.extend_from_slice(&record);
        meta
    }

    #[test]
    fn names_of_blobs_are_parsed_and_others_skipped() {
        let hex = "ab".repeat(32);
        let mut buffer = event(&hex);
        buffer.extend(event("tmp-123"));
        buffer.extend(event(&"cd".repeat(32)));
        // A truncated trailing event is ignored, not misread.
        buffer.extend_from_slice(&event(&hex)[..30]);
        assert_eq!(
            parse_names(&buffer),
            vec![
                format!("sha256:{hex}"),
                format!("sha256:{}", "cd".repeat(32))
            ]
        );
        assert!(parse_names(&[0u8; 10]).is_empty());
        assert!(parse_names(&[0xffu8; 64]).is_empty());
    }

    #[tokio::test]
    async fn renames_into_the_blob_directory_are_reported() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: fanotify needs CAP_SYS_ADMIN");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ig-content-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::create_dir_all(dir.join("ingest")).unwrap();
        let mut watch = ContentWatch::new(&dir.join("blobs/sha256")).unwrap();
        let hex = "0f".repeat(32);
        std::fs::write(dir.join("ingest/data"), b"{}").unwrap();
        std::fs::rename(dir.join("ingest/data"), dir.join("blobs/sha256").join(&hex)).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
            .await
            .expect("an event within 5 s")
            .unwrap();
        assert_eq!(got, vec![format!("sha256:{hex}")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
