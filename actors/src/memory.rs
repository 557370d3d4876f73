//! Bounds what the C allocator keeps.
//!
//! glibc's malloc keeps freed memory for reuse, and three of its habits let
//! that grow under the router's load (`benches/README.md`, sustained load,
//! where a heap profile showed the memory in use bounded while the resident
//! set kept growing):
//!
//! - a thread that meets a locked arena gets an arena of its own, up to eight
//!   per core, and the router runs many threads (the runtime's workers, the
//!   embedded log's writer threads, the blocking pool). `serve` allows one
//!   arena per core, at least two.
//! - a block of 128 KiB or more is mapped on its own and unmapped when freed,
//!   but each such free raises that threshold to the block's size (up to
//!   32 MiB), so the next large blocks (a trace checkpoint, a large message's
//!   content) come from the arenas and stay there once freed. `serve` fixes
//!   the threshold at [`MMAP_THRESHOLD`], which turns the raising off.
//! - freed memory inside an arena stays resident until something trims it.
//!   `serve` hands it back every [`TRIM_INTERVAL`] ([`trim`]).
//!
//! `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_`, which glibc reads itself,
//! win when set. Other C libraries are left alone.

use std::time::Duration;

/// How often `serve` gives the arenas' free memory back to the system.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// Blocks of this size or more are mapped on their own and returned to the
/// system when freed. Above a 100 KiB message's content and below a trace
/// checkpoint's or a 35 MiB message's.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// The arena limit `serve` sets: one per core, at least two.
pub fn arena_limit(cores: usize) -> usize {
    cores.max(2)
}

/// What [`limit`] set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The arena limit, unless `MALLOC_ARENA_MAX` was set.
    pub arenas: Option<usize>,
    /// The mapping threshold, unless `MALLOC_MMAP_THRESHOLD_` was set.
    pub mmap_threshold: Option<usize>,
}

/// Sets [`arena_limit`] and [`MMAP_THRESHOLD`], each unless its glibc
/// variable is in the environment. Call before threads start.
pub fn limit() -> Limits {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let unset = |name: &str| std::env::var_os(name).is_none();
    Limits {
        arenas: unset("MALLOC_ARENA_MAX").then(|| arena_limit(cores)).filter(|&n| set(Param::ArenaMax, n)),
        mmap_threshold: unset("MALLOC_MMAP_THRESHOLD_")
            .then_some(MMAP_THRESHOLD)
            .filter(|&n| set(Param::MmapThreshold, n)),
    }
}

/// Gives the free memory of every arena back to the system (glibc's
/// `malloc_trim`); true when some was. It takes each arena's lock in turn, so
/// it belongs on a blocking thread.
#[allow(unsafe_code)]
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the allocator's locks itself and only
        // releases memory no allocation holds.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims every [`TRIM_INTERVAL`] for ever, on the blocking pool.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// What the allocator holds, summed over its arenas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated and not freed, mapped blocks included.
    pub in_use: u64,
    /// Bytes freed and kept in the arenas for reuse.
    pub free: u64,
}

/// The allocator's [`Usage`] (glibc's `mallinfo2`), or `None` with another C library.
#[allow(unsafe_code)]
pub fn usage() -> Option<Usage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters, under its locks.
        let info = unsafe { libc::mallinfo2() };
        Some(Usage { in_use: (info.uordblks + info.hblkhd) as u64, free: info.fordblks as u64 })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

enum Param {
    ArenaMax,
    MmapThreshold,
}

/// Sets one of malloc's parameters (glibc's `mallopt`); true when it took.
#[allow(unsafe_code)]
fn set(param: Param, value: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let param = match param {
            Param::ArenaMax => libc::M_ARENA_MAX,
            Param::MmapThreshold => libc::M_MMAP_THRESHOLD,
        };
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a parameter of glibc's allocator, under its
        // own lock; both parameters apply to allocations made afterwards.
        unsafe { libc::mallopt(param, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (param, value);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn usage_counts_an_allocation_while_it_lives() {
        let before = usage().expect("glibc reports its usage").in_use;
        // Large enough that other tests' allocations meanwhile do not hide it.
        let block = std::hint::black_box(vec![1u8; 256 << 20]);
        let during = usage().expect("glibc reports its usage").in_use;
        assert!(during >= before + (192 << 20), "{before} then {during}");
        drop(block);
    }

    #[test]
    fn one_arena_per_core_and_at_least_two() {
        assert_eq!(arena_limit(1), 2);
        assert_eq!(arena_limit(2), 2);
        assert_eq!(arena_limit(16), 16);
    }
}
