//! Where model bytes come from. A loader asks a [`ModelSource`] for byte ranges instead of
//! holding the whole file, so in the browser a model lives in a JS `Blob` (a `File`, or one
//! from the Cache API) and the wasm heap (4 GiB at most) only ever sees one tensor at a time.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::gguf::{parse_header, GgufHeader};
use crate::error::{PupilError, Result};

/// Random access to a model file's bytes.
#[allow(async_fn_in_trait)]
pub trait ModelSource {
    /// Bytes in the file.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Exactly `len` bytes from `offset`; a range past the end is `PupilError::Truncated`.
    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>>;
}

/// `offset..offset + len` as an index range of a `size`-byte file: `Truncated` past the end,
/// `TooLarge` past the address space (a wasm32 heap).
pub(crate) fn checked_range(offset: u64, len: u64, size: u64) -> Result<std::ops::Range<usize>> {
    let end = offset.checked_add(len).filter(|&e| e <= size).ok_or(PupilError::Truncated {
        what: "model file".into(),
        needed: offset.saturating_add(len),
        have: size,
    })?;
    match (usize::try_from(offset), usize::try_from(end)) {
        (Ok(start), Ok(end)) => Ok(start..end),
        _ => {
            Err(PupilError::TooLarge { what: "a read of the model file".into(), bytes: end, limit: usize::MAX as u64 })
        }
    }
}

/// A file already in memory.
impl ModelSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        Ok(self[checked_range(offset, len, ModelSource::len(self))?].to_vec())
    }
}

impl ModelSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.as_slice().read_at(offset, len).await
    }
}

/// First read of a header: enough for most small models' whole header (SmolLM2's is ~2 MiB
/// with its vocabulary, so it takes two more reads).
const FIRST_HEADER_READ: u64 = 256 << 10;

/// The largest header the loader reads into memory. Real headers are a few MiB (Gemma 3's
/// 262k-token vocabulary: ~6 MiB); a file claiming more is hostile or broken, and in the
/// browser the prefix would sit in the wasm heap.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;

/// Parse the GGUF header, reading a prefix of the file and extending it while the parser says
/// it is cut short (each read at least doubles the prefix, so few reads are needed; only the
/// missing bytes are read). A header that needs more bytes than the file has is `Truncated`.
pub async fn read_header<S: ModelSource + ?Sized>(source: &S) -> Result<GgufHeader> {
    let size = source.len();
    let mut prefix = source.read_at(0, size.min(FIRST_HEADER_READ)).await?;
    loop {
        match parse_header(&prefix) {
            Err(PupilError::Truncated { needed, what, .. }) => {
                let have = prefix.len() as u64;
                if have >= size || needed > size {
                    return Err(PupilError::Truncated { what, needed, have: size });
                }
                if needed > MAX_HEADER_BYTES {
                    return Err(PupilError::TooLarge {
                        what: "GGUF header".into(),
                        bytes: needed,
                        limit: MAX_HEADER_BYTES,
                    });
                }
                let want = needed.max(have.saturating_mul(2)).min(size);
                prefix.extend(source.read_at(have, want - have).await?);
            }
            other => return other,
        }
    }
}

/// The output of a future that is ready at its first poll (an in-memory source never waits),
/// or `None` if it is not.
pub(crate) fn now_or_never<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
