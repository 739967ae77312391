//! [`DiskReserve`]: room kept on the outbox's file system for the records that matter most
//! when the disk fills up.
//!
//! A file of `[outbox] reserve_mb` zeros (blocks actually allocated, not sparse) sits beside
//! the database (`<outbox path>.reserve`). When a write fails with an I/O error (disk full),
//! the outbox deletes it before reopening the database, so the reopen and the next writes
//! have that much room, and enters *low-space mode*: only [`protected`] streams (alarms,
//! drift, events) are stored; samples, features and predictions are refused and counted as
//! dropped, and the oldest stored samples are evicted to give the database pages to reuse.
//! Every [`RESTORE_EVERY`] the reserve is written again; once that succeeds the disk has
//! room again and every stream is stored as before.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Stream;

/// How often low-space mode tries to write the reserve again.
pub const RESTORE_EVERY: Duration = Duration::from_secs(5);

/// Streams stored from the reserve while the disk is full: rare, small, and what an operator
/// must not miss.
pub fn protected(stream: Stream) -> bool {
    matches!(stream, Stream::Alarms | Stream::Drift | Stream::Events)
}

/// The disk reserve of one outbox and its low-space mode (module doc). Owned by the outbox;
/// all methods take `&self`.
#[derive(Debug)]
pub struct DiskReserve {
    path: PathBuf,
    bytes: u64,
    low_space: AtomicBool,
    /// When low-space mode may next try to restore the reserve.
    next_try: Mutex<Instant>,
}

impl DiskReserve {
    /// Writes the reserve file beside `outbox` (unless it is there at full size). `bytes == 0`
    /// disables it. If the disk has no room for it, the outbox starts in low-space mode.
    pub fn open(outbox: &Path, bytes: u64) -> DiskReserve {
        let r = DiskReserve {
            path: PathBuf::from(format!("{}.reserve", outbox.display())),
            bytes,
            low_space: AtomicBool::new(false),
            next_try: Mutex::new(Instant::now()),
        };
        if bytes > 0 {
            if let Err(e) = r.fill() {
                r.low_space.store(true, Ordering::Release);
                tracing::error!(reserve = %r.path.display(), bytes,
                    "cannot write the outbox's disk reserve ({e}): starting in low-space mode \
                     (only alarms, drift and events are stored until there is room)");
            }
        }
        r
    }

    /// The reserve file (`<outbox path>.reserve`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the disk is full and only [`protected`] streams are stored.
    pub fn low_space(&self) -> bool {
        self.low_space.load(Ordering::Acquire)
    }

    /// After an I/O error: frees the reserve and enters low-space mode. `true` if this call
    /// entered it (the caller logs and evicts); `false` if it was already in it or disabled.
    pub fn release(&self) -> bool {
        if self.bytes == 0 || self.low_space.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(reserve = %self.path.display(), "cannot free the outbox's disk reserve: {e}");
            }
        }
        *self.next_try.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + RESTORE_EVERY;
        true
    }

    /// In low-space mode, at most every [`RESTORE_EVERY`]: writes the reserve again. `true` if
    /// that worked and the outbox left low-space mode. Blocking (writes and syncs the file).
    pub fn try_restore(&self) -> bool {
        if !self.low_space() {
            return false;
        }
        {
            let mut next = self.next_try.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() < *next {
                return false;
            }
            *next = Instant::now() + RESTORE_EVERY;
        }
        match self.fill() {
            Ok(()) => {
                self.low_space.store(false, Ordering::Release);
                true
            }
            Err(_) => false,
        }
    }

    /// Writes `bytes` zeros (allocated blocks, synced) and puts the file in place atomically;
    /// a partial file is removed again.
    fn fill(&self) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes) {
            return Ok(());
        }
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let chunk = vec![0u8; 1 << 20];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_enters_low_space_once_and_restore_waits_for_its_turn() {
        let d = std::env::temp_dir().join(format!("reserve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let r = DiskReserve::open(&d.join("outbox"), 3 << 20);
        assert_eq!(std::fs::metadata(r.path()).unwrap().len(), 3 << 20);
        assert!(!r.low_space());
        assert!(r.release(), "the first release enters low-space mode");
        assert!(!r.release(), "a second one does not");
        assert!(r.low_space() && !r.path().exists());
        // Not due yet: the reserve stays freed.
        assert!(!r.try_restore() && r.low_space());
        *r.next_try.lock().unwrap() = Instant::now();
        assert!(r.try_restore() && !r.low_space());
        assert_eq!(std::fs::metadata(r.path()).unwrap().len(), 3 << 20);
        assert!(protected(Stream::Alarms) && !protected(Stream::Samples));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_disabled_reserve_writes_nothing_and_never_enters_low_space() {
        let d = std::env::temp_dir().join(format!("reserve0-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let r = DiskReserve::open(&d.join("outbox"), 0);
        assert!(!r.path().exists());
        assert!(!r.release() && !r.low_space());
        let _ = std::fs::remove_dir_all(&d);
    }
}
