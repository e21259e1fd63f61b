//! Gives back the pages of code that only start-up runs (argument parsing, config loading and
//! checking, building the instance) once the instance is ready.
//!
//! `link/hot-symbols.txt` lists the functions a running oxray executes in two groups, split at
//! [`startup_done`]: what runs while serving, then, between [`oxray_startup_text_begin`] and
//! [`oxray_startup_text_end`], what ran only before it. The linker lays them out in that order, so
//! start-up-only code fills its own run of pages, which stay resident for the process's life after
//! running once. Dropping them is safe: the text is a clean private mapping of the binary, and a
//! page touched again (a reload parses a config) faults back in from the page cache.

/// Where the start-up-only functions begin in the text; its address is all that is used.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn oxray_startup_text_begin() -> u32 {
    // Distinct bodies, so no linker folds the two markers into one.
    std::hint::black_box(0x5354_4152)
}

/// Where they end.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn oxray_startup_text_end() -> u32 {
    std::hint::black_box(0x454e_4421)
}

/// Marks the end of start-up: `tools/hot-symbols.sh` splits its profile here (callgrind
/// `--dump-before`). Called once the listeners are up and the instance is ready.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn oxray_startup_done() {
    std::hint::black_box(());
}

/// The largest run of pages this will drop: the start-up group measures well under 2 MiB, and a
/// wider span means the markers were not placed by the list (another linker, a stale list).
const MOST: usize = 8 << 20;

/// Ends start-up: drops the resident pages of start-up-only code. Returns the bytes of address
/// space released (0 when the markers are not laid out as the list asks).
pub fn startup_done() -> usize {
    oxray_startup_done();
    release()
}

/// Drops the start-up-only pages again (after a reload ran the config code).
///
/// `OXRAY_KEEP_STARTUP_TEXT=1` keeps them: dropping a page also drops a debugger's breakpoint or a
/// uprobe placed in it (they live in a private copy of the page).
pub fn release() -> usize {
    if std::env::var_os("OXRAY_KEEP_STARTUP_TEXT").is_some_and(|v| v == "1") {
        return 0;
    }
    let begin = oxray_startup_text_begin as *const () as usize;
    let end = oxray_startup_text_end as *const () as usize;
    let Some((start, len)) = inner_pages(begin, end, page_size()) else {
        tracing::debug!("start-up text: markers at {begin:#x}..{end:#x} not ordered by the list, nothing released");
        return 0;
    };
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the range is whole pages strictly inside the text between two functions of this
        // binary; MADV_DONTNEED on a clean file mapping only unmaps pages, which fault back in from
        // the file when run again. It changes no memory contents.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc != 0 {
            tracing::debug!("start-up text: madvise: {}", std::io::Error::last_os_error());
            return 0;
        }
        tracing::debug!("start-up text: {} KiB released", len / 1024);
        len
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (start, len);
        0
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n.is_power_of_two()).unwrap_or(4096)
}

/// The whole pages strictly between `begin` and `end`: the pages holding the markers themselves
/// may share code that runs while serving.
fn inner_pages(begin: usize, end: usize, page: usize) -> Option<(usize, usize)> {
    if end <= begin || end - begin > MOST {
        return None;
    }
    let start = begin.checked_add(page - 1)? & !(page - 1);
    let stop = end & !(page - 1);
    (stop > start).then(|| (start, stop - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_pages_strictly_inside_are_released() {
        assert_eq!(inner_pages(0x1000, 0x5000, 0x1000), Some((0x1000, 0x4000)));
        assert_eq!(inner_pages(0x1001, 0x5fff, 0x1000), Some((0x2000, 0x3000)));
        assert_eq!(inner_pages(0x1001, 0x2fff, 0x1000), None, "no whole page between");
        assert_eq!(inner_pages(0x5000, 0x1000, 0x1000), None, "markers out of order");
        assert_eq!(inner_pages(0x1000, 0x1000 + MOST + 0x1000, 0x1000), None, "span too wide to be the list's");
        assert_eq!(inner_pages(usize::MAX - 10, usize::MAX, 0x1000), None);
    }
}
