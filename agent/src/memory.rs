//! Process memory housekeeping after one-off work (startup, model loads): hand freed heap back
//! to the kernel and let it reclaim the code pages that only that work needed.
//!
//! Loading a model runs tract's ONNX parser and graph optimizer once: megabytes of code that
//! the steady state never executes again stay mapped (file-backed, counted in RSS and in the
//! service's cgroup memory), and glibc keeps the freed parse garbage in its arenas. Both calls
//! here are advice to the kernel and cannot change what the program computes: a code page that
//! is needed again is simply read back in (a one-time fault).
//!
//! The only unsafe code of the agent (the crate root denies it with this named exception):
//! two libc calls without a safe binding.

use std::ffi::{c_int, c_void};

/// `MADV_PAGEOUT` (Linux >= 5.4; the same value on every architecture we build for).
#[cfg(target_os = "linux")]
const MADV_PAGEOUT: c_int = 21;

#[allow(unsafe_code)]
mod sys {
    use super::*;
    unsafe extern "C" {
        pub fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
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

/// Asks the kernel to reclaim the resident pages of this executable's code (its `r-x`
/// mappings). Returns the bytes advised; 0 where unsupported (old kernel, not Linux, qemu-user).
/// Only executable mappings: read-only data that relocation made private stays untouched.
#[allow(unsafe_code)]
pub fn release_code_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut advised = 0;
        for (start, end) in code_mappings(&maps, &exe.to_string_lossy()) {
            // SAFETY: advice on a read-only, executable, file-backed mapping of our own binary;
            // MADV_PAGEOUT drops resident pages, which fault back in unchanged when used.
            let r = unsafe { sys::madvise(start as *mut c_void, end - start, MADV_PAGEOUT) };
            if r == 0 {
                advised += end - start;
            }
        }
        advised
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The `r-x` mappings of `exe` in a `/proc/self/maps` text, as address ranges.
fn code_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = &line[line.find('/')?..];
            if path != exe || !perms.starts_with("r-x") {
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
    fn finds_only_the_executables_code_mappings() {
        let maps = "\
00400000-00452000 r--p 00000000 fd:01 123 /usr/bin/edge-agent
00452000-00c00000 r-xp 00052000 fd:01 123 /usr/bin/edge-agent
00c00000-00d00000 r--p 00800000 fd:01 123 /usr/bin/edge-agent
00d00000-00d10000 rw-p 00900000 fd:01 123 /usr/bin/edge-agent
7f0000000000-7f0000100000 r-xp 00000000 fd:01 456 /usr/lib/libother.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            code_mappings(maps, "/usr/bin/edge-agent"),
            vec![(0x452000, 0xc00000)]
        );
        assert!(code_mappings(maps, "/usr/bin/other").is_empty());
    }

    /// On this (Linux) test machine the call succeeds on the test binary's own code and the
    /// process keeps running the code it just paged out.
    #[test]
    fn paging_out_code_keeps_the_process_working() {
        let advised = release_code_pages();
        assert!(advised > 0, "no code mapping advised");
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
    }
}
