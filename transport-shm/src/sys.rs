//! The system calls the transport needs, each wrapped once with its safety argument: an
//! anonymous memory file, its mapping, eventfds, and passing descriptors over a Unix socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An anonymous memory file of `len` bytes, zero-filled: the segment. It has no name in any
/// file system, so only processes handed the descriptor can reach it.
pub(crate) fn memfd(len: usize) -> io::Result<OwnedFd> {
    let name = c"courier-shm";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid for memfd_create.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: `fd` is an open memfd owned by us.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(fd)
}

/// The size of the file behind `fd`.
pub(crate) fn file_len(fd: &OwnedFd) -> io::Result<usize> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; `st` is a valid, writable `stat`.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    usize::try_from(st.st_size).map_err(|_| io::Error::other("negative file size"))
}

/// A shared, read-write mapping of a whole memory file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, valid until dropped; the rings access it only
// through atomics and bounds-checked copies, from whichever thread holds them.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself hands out only the base pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the kernel picks the
        // address, so no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(Mapping { base, len })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned and nothing uses the mapping
        // after drop (the rings that point into it are owned alongside it and dropped first).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// A non-blocking eventfd: the doorbell one process rings to wake the other.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: valid flags; returns a fresh descriptor or -1.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: fresh descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Rings the doorbell. A full counter (EAGAIN) means a wake-up is pending anyway.
pub(crate) fn ring(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd descriptor.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Clears the doorbell; true if it had been rung.
pub(crate) fn drain(fd: RawFd) -> bool {
    let mut count: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64 from an eventfd descriptor (non-blocking).
    let n = unsafe { libc::read(fd, (&mut count as *mut u64).cast(), 8) };
    n == 8
}

/// Sends `fds` with one byte over a connected Unix socket (SCM_RIGHTS).
pub(crate) fn send_fds(socket: RawFd, fds: &[RawFd]) -> io::Result<()> {
    let payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let data_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the fields set below point to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` has a control buffer of CMSG_SPACE(data_len) bytes, so the first header and
    // its data fit; CMSG_FIRSTHDR/CMSG_DATA point inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len);
    }
    // SAFETY: `msg` and everything it points to are valid for the call.
    let sent = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives exactly `N` descriptors sent with [`send_fds`]. Anything else (no descriptors,
/// another count, a truncated control message) is an error, and descriptors received in a
/// malformed message are closed rather than leaked.
pub(crate) fn recv_fds<const N: usize>(socket: RawFd) -> io::Result<[OwnedFd; N]> {
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let data_len = N * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: as in `send_fds`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points to live buffers; MSG_CMSG_CLOEXEC marks received descriptors.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "socket closed",
        ));
    }
    let mut received = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, within
    // msg_controllen; each data pointer is read only within its cmsg_len.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    received.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors truncated"));
    }
    received
        .try_into()
        .map_err(|_| io::Error::other("wrong number of descriptors"))
}

/// Shuts a socket down in both directions: the peer reads the end of the stream.
pub(crate) fn shutdown(socket: RawFd) {
    // SAFETY: shutdown on a descriptor we own; errors (already closed) are harmless here.
    unsafe { libc::shutdown(socket, libc::SHUT_RDWR) };
}
