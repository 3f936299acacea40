//! The run lock of an SQLite store: an open-file-description lock (`F_OFD_SETLK`) on one byte of
//! `<db>.lock`, next to the database, at an offset given by the sweep's name. It goes with the
//! store, not with a state directory, so two runs of one sweep on one store exclude each other
//! whatever their `--state-dir`; runs of different sweeps do not. The kernel drops the lock when
//! the process ends, kill -9 included, and `status` can test it without taking it
//! (`F_OFD_GETLK`), so it tells a live run from a dead one without ever blocking a run.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `<db>.lock`: the file beside the database that carries the run locks.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The byte of `<db>.lock` that stands for `sweep` (FNV-1a of the name, below 2^62). Two names
/// with the same byte would exclude each other, never run together.
fn offset(sweep: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sweep.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::try_from(h >> 2).unwrap_or(0)
}

fn request(sweep: &str, kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value (l_pid must be 0 for OFD locks).
    #[allow(unsafe_code)]
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset(sweep);
    fl.l_len = 1;
    fl
}

/// Takes the run lock of `sweep` without waiting: `Ok(None)` when another process holds it.
pub fn try_lock(db: &Path, sweep: &str) -> io::Result<Option<File>> {
    let path = lock_path(db);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    let fl = request(sweep, libc::F_WRLCK as libc::c_short);
    // SAFETY: fcntl on a descriptor we own, with a valid `flock`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(None),
        _ => Err(io::Error::new(
            e.kind(),
            format!("lock {}: {e}", path.display()),
        )),
    }
}

/// Whether a process holds the run lock of `sweep` now (without taking it).
pub fn is_locked(db: &Path, sweep: &str) -> io::Result<bool> {
    let path = lock_path(db);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut fl = request(sweep, libc::F_WRLCK as libc::c_short);
    // SAFETY: fcntl on a descriptor we own, with a valid `flock` it may write.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_one_sweep_is_refused_and_other_sweeps_are_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.sqlite");
        assert!(!is_locked(&db, "a").expect("test"));
        let held = try_lock(&db, "a").expect("lock").expect("free");
        assert!(is_locked(&db, "a").expect("test"));
        // A second open file description (as a second process would have) is refused.
        assert!(try_lock(&db, "a").expect("lock").is_none());
        assert!(!is_locked(&db, "b").expect("test"));
        let other = try_lock(&db, "b").expect("lock");
        assert!(other.is_some());
        drop(held);
        assert!(!is_locked(&db, "a").expect("test"));
        assert!(try_lock(&db, "a").expect("lock").is_some());
    }
}
