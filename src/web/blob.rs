//! A browser `Blob` (a `File` the user picked, or a cached download) as a [`ModelSource`]:
//! each read slices the blob and copies just that range into the wasm heap, so a model is
//! never held whole there.

use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use web_sys::Blob;

use crate::error::{PupilError, Result};
use crate::model::source::{checked_range, ModelSource};

fn read_err(offset: u64, len: u64, e: JsValue) -> PupilError {
    // A File changed or removed on disk since it was picked fails here (NotReadableError).
    PupilError::Format(format!("could not read bytes {offset}..{} of the model file: {e:?}", offset + len))
}

impl ModelSource for Blob {
    fn len(&self) -> u64 {
        self.size() as u64
    }

    async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let size = ModelSource::len(self);
        checked_range(offset, len, size)?;
        let part =
            self.slice_with_f64_and_f64(offset as f64, (offset + len) as f64).map_err(|e| read_err(offset, len, e))?;
        let buffer = JsFuture::from(part.array_buffer()).await.map_err(|e| read_err(offset, len, e))?;
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        if bytes.len() as u64 != len {
            return Err(PupilError::Truncated {
                what: "model file (the blob returned fewer bytes than its size)".into(),
                needed: offset + len,
                have: offset + bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}
