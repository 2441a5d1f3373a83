#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    // Const-initialised and without a destructor: reading it from inside the allocator
    // never allocates and works until the thread is gone.
    static NET: Cell<i64> = const { Cell::new(0) };
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Wraps an allocator (the system's by default) and counts, per thread, the bytes
/// allocated minus the bytes freed on that thread.
///
/// Install it with `#[global_allocator]` in the binary; libraries only read
/// [`thread_net_bytes`].
#[derive(Debug, Default)]
pub struct CountingAlloc<A = System>(pub A);

impl CountingAlloc<System> {
    /// The system allocator, counted.
    pub const fn system() -> Self {
        CountingAlloc(System)
    }
}

fn add(delta: i64) {
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(delta)));
}

// SAFETY: every call is forwarded unchanged to the wrapped allocator; the counting only
// touches a thread-local integer and never allocates or unwinds.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Bytes allocated minus bytes freed by the calling thread since it started (negative
/// when it freed more than it allocated, e.g. memory allocated by another thread).
/// Always 0 when no [`CountingAlloc`] is the global allocator.
pub fn thread_net_bytes() -> i64 {
    let n = NET.try_with(Cell::get).unwrap_or(0);
    if n != 0 && !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    n
}

/// Whether a [`CountingAlloc`] is counting: a thread that allocates something is seen to
/// move its counter.
pub fn installed() -> bool {
    let before = thread_net_bytes();
    let probe = std::hint::black_box(vec![0u8; 64]);
    let moved = thread_net_bytes() != before;
    drop(probe);
    moved || INSTALLED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc::system();

    #[test]
    fn counts_what_this_thread_allocates_and_frees() {
        assert!(installed());
        let before = thread_net_bytes();
        let v = vec![0u8; 1 << 20];
        let during = thread_net_bytes();
        assert!(during - before >= 1 << 20, "{before} -> {during}");
        drop(v);
        assert!(thread_net_bytes() - before < 1024);
    }

    #[test]
    fn other_threads_do_not_count() {
        let before = thread_net_bytes();
        std::thread::spawn(|| std::hint::black_box(vec![0u8; 1 << 20]).len())
            .join()
            .unwrap();
        // The spawned thread's stack and handle are small; its megabyte is not ours.
        assert!(thread_net_bytes() - before < 1 << 19);
    }
}
