//! Process memory housekeeping after one-off work (startup, model loads): hand freed heap back
//! to the kernel and let it reclaim the pages of the executable that only that work needed.
//!
//! Loading a model runs tract's ONNX parser and graph optimizer once: megabytes of code that
//! the steady state never executes again stay mapped (file-backed, counted in RSS and in the
//! service's cgroup memory); the static-PIE startup reads 1.4 MB of relocations once; and glibc
//! keeps the freed parse garbage in its arenas. The calls here are advice to the kernel and
//! cannot change what the program computes: a page that is needed again is simply read back in
//! (a one-time fault). The executable's mappings are also marked for random access, so such a
//! fault reads the one page it needs instead of the 128 kB around it (read-around would bring
//! back, and keep resident, neighbours the steady state never runs).
//!
//! The only unsafe code of the agent (the crate root denies it with this named exception):
//! three libc calls without a safe binding.

use std::ffi::{c_int, c_void};

/// `MADV_PAGEOUT` (Linux >= 5.4; the same value on every architecture we build for).
#[cfg(target_os = "linux")]
const MADV_PAGEOUT: c_int = 21;
/// `MADV_RANDOM`: no read-around on page faults in the range (same value everywhere).
#[cfg(target_os = "linux")]
const MADV_RANDOM: c_int = 1;
/// `POSIX_FADV_DONTNEED` (4 on every architecture we build for).
#[cfg(target_os = "linux")]
const POSIX_FADV_DONTNEED: c_int = 4;

#[allow(unsafe_code)]
mod sys {
    use super::*;
    unsafe extern "C" {
        pub fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
        // off_t is 64 bits on musl everywhere and on 64-bit glibc (the only glibc we use).
        #[cfg(all(
            target_os = "linux",
            any(target_env = "musl", target_pointer_width = "64")
        ))]
        pub fn posix_fadvise(fd: c_int, offset: i64, len: i64, advice: c_int) -> c_int;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        pub fn malloc_trim(pad: usize) -> c_int;
    }
}

/// Returns freed heap to the kernel. glibc keeps freed megabytes in its arenas unless asked;
/// musl's allocator (the static builds) unmaps large free chunks by itself: nothing to do.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        sys::malloc_trim(0);
    }
}

/// Asks the kernel to reclaim the resident pages of this executable's read-only mappings (code,
/// constants, unwind tables, the relocations startup applied) and to fault them back one page
/// at a time. Returns the bytes advised; 0 where unsupported (old kernel, not Linux,
/// qemu-user). Writable mappings are never touched.
///
/// Also drops the binary's cached but unmapped pages (what read-ahead brought in at startup):
/// otherwise the kernel's fault-around maps them into the process again on the next fault
/// nearby. Another process running the same binary just re-reads what it needs.
#[allow(unsafe_code)]
pub fn release_executable_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut advised = 0;
        for (start, end) in read_only_mappings(&maps, &exe.to_string_lossy()) {
            // SAFETY: advice on a read-only, file-backed mapping of our own binary: MADV_RANDOM
            // only changes read-ahead, MADV_PAGEOUT drops resident pages (clean file pages are
            // re-read unchanged when used; private copies, if any, go to swap or stay).
            let r = unsafe {
                sys::madvise(start as *mut c_void, end - start, MADV_RANDOM);
                sys::madvise(start as *mut c_void, end - start, MADV_PAGEOUT)
            };
            if r == 0 {
                advised += end - start;
            }
        }
        // The binary's clean page-cache pages that nothing maps any more.
        #[cfg(any(target_env = "musl", target_pointer_width = "64"))]
        if let Ok(f) = std::fs::File::open("/proc/self/exe") {
            use std::os::fd::AsRawFd;
            // SAFETY: advice on an open file descriptor we own; it cannot change the data.
            unsafe {
                sys::posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED);
            }
        }
        advised
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The non-writable mappings (`r--`, `r-x`) of `exe` in a `/proc/self/maps` text, as address
/// ranges.
fn read_only_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = &line[line.find('/')?..];
            if path != exe || !perms.starts_with("r-") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_the_executables_read_only_mappings() {
        let maps = "\
00400000-00452000 r--p 00000000 fd:01 123 /usr/bin/edge-agent
00452000-00c00000 r-xp 00052000 fd:01 123 /usr/bin/edge-agent
00c00000-00d00000 r--p 00800000 fd:01 123 /usr/bin/edge-agent
00d00000-00d10000 rw-p 00900000 fd:01 123 /usr/bin/edge-agent
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/libother.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            read_only_mappings(maps, "/usr/bin/edge-agent"),
            vec![
                (0x400000, 0x452000),
                (0x452000, 0xc00000),
                (0xc00000, 0xd00000)
            ]
        );
        assert!(read_only_mappings(maps, "/usr/bin/other").is_empty());
    }

    /// On this (Linux) test machine the call succeeds on the test binary's own code and the
    /// process keeps running the code it just paged out.
    #[test]
    fn paging_out_code_keeps_the_process_working() {
        let advised = release_executable_pages();
        assert!(advised > 0, "no code mapping advised");
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
    }
}
