//! A file's handle as its file system encodes it (`name_to_handle_at`): how the fanotify backend
//! reopens a backing file through a mount of its file system, and where tmpfs keeps the inode
//! generation that keys carry.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
pub struct FileHandle {
    /// Bytes of `data` in use.
    pub bytes: libc::c_uint,
    /// The file system's handle type.
    pub kind: libc::c_int,
    /// The handle, in the file system's own layout.
    pub data: [u8; libc::MAX_HANDLE_SZ as usize],
}

impl FileHandle {
    /// The handle of the open file `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let mut handle = Self {
            bytes: libc::MAX_HANDLE_SZ as libc::c_uint,
            kind: 0,
            data: [0; libc::MAX_HANDLE_SZ as usize],
        };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: handle has room for MAX_HANDLE_SZ bytes, as its header says; "" is a valid path.
        let result = unsafe {
            libc::name_to_handle_at(
                fd.as_raw_fd(),
                c"".as_ptr(),
                (&raw mut handle).cast(),
                &raw mut mount_id,
                libc::AT_EMPTY_PATH,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(handle)
    }

    /// The handle's `index`th 32-bit word, if it has one.
    #[must_use]
    pub fn word(&self, index: usize) -> Option<u32> {
        let start = index.checked_mul(4)?;
        if start + 4 > self.bytes as usize {
            return None;
        }
        let bytes: [u8; 4] = self.data.get(start..start + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(bytes))
    }
}
