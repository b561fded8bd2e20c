//! Accounting of GPU bytes: every buffer Pupil allocates is counted here while it lives, so
//! the engine can report the current and peak footprint and tests can assert it stays flat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct MemoryTracker {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    current: AtomicU64,
    peak: AtomicU64,
    buffers: AtomicU64,
}

impl MemoryTracker {
    pub(crate) fn allocated(&self, bytes: u64) {
        let now = self.inner.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.inner.peak.fetch_max(now, Ordering::Relaxed);
        self.inner.buffers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn freed(&self, bytes: u64) {
        self.inner.current.fetch_sub(bytes, Ordering::Relaxed);
        self.inner.buffers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Bytes held by live buffers now.
    pub fn current_bytes(&self) -> u64 {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// Highest value `current_bytes` has reached (since creation or the last `reset_peak`).
    pub fn peak_bytes(&self) -> u64 {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// Number of live buffers.
    pub fn live_buffers(&self) -> u64 {
        self.inner.buffers.load(Ordering::Relaxed)
    }

    pub fn reset_peak(&self) {
        self.inner.peak.store(self.current_bytes(), Ordering::Relaxed);
    }
}
