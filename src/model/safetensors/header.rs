//! The safetensors container: an 8-byte little-endian header length, a JSON header (tensor name
//! → `{dtype, shape, data_offsets}`, optionally `__metadata__`), then the data section; offsets
//! are relative to the data section's start. The header is read from a prefix of the file, and
//! nothing is trusted: its length is bounded and checked against the file before it is read,
//! every tensor's size is `product(shape) · dtype size` computed without overflow and must equal
//! its byte range, ranges lie inside the data section and do not overlap, and only the float
//! types Pupil converts (F32, F16, BF16) are accepted.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::{PupilError, Result};
use crate::model::source::ModelSource;
use crate::quant::QuantType;

/// The safetensors format's own limit on the JSON header (the reference implementation's
/// `MAX_HEADER_SIZE`); a larger claim is hostile or broken, and in the browser the header
/// would sit in the wasm heap.
pub const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

/// More dimensions than any tensor has; bounds what a hostile `shape` array can allocate.
const MAX_RANK: usize = 8;

/// The float types a checkpoint may store; each is also a GGUF type, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// The same encoding as a GGUF type (both little-endian IEEE / bfloat16).
    pub fn gguf(self) -> QuantType {
        match self {
            Dtype::F32 => QuantType::F32,
            Dtype::F16 => QuantType::F16,
            Dtype::BF16 => QuantType::BF16,
        }
    }
}

/// One tensor of one safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major (PyTorch order: the last dimension is contiguous).
    pub shape: Vec<u64>,
    /// Absolute offset of the first byte in the file.
    pub start: u64,
    pub len: u64,
}

/// A JSON header entry as written, before its checks.
#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Shape,
    data_offsets: [u64; 2],
}

/// A shape of at most [`MAX_RANK`] dimensions (refused while parsing, before a long array is
/// collected).
struct Shape(Vec<u64>);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of at most {MAX_RANK} dimensions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Shape, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    if dims.len() == MAX_RANK {
                        return Err(de::Error::custom(format!("more than {MAX_RANK} dimensions")));
                    }
                    dims.push(d);
                }
                Ok(Shape(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The header's entries, `__metadata__` skipped, each tensor's parse error naming it.
struct Entries(Vec<(String, Entry)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let e =
                        map.next_value::<Entry>().map_err(|e| de::Error::custom(format!("tensor `{name}`: {e}")))?;
                    out.push((name, e));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn err(what: &str, detail: String) -> PupilError {
    PupilError::Format(format!("safetensors {what}: {detail}"))
}

/// Parse the JSON header `json` of a `file_len`-byte file whose header length field said
/// `json.len()`. `what` names the file in errors (`file`, `shard 2 of 3`).
pub fn parse_json_header(json: &[u8], file_len: u64, what: &str) -> Result<Vec<StTensor>> {
    let data_start = 8 + json.len() as u64;
    let data_len = file_len.checked_sub(data_start).ok_or_else(|| PupilError::Truncated {
        what: format!("safetensors {what}"),
        needed: data_start,
        have: file_len,
    })?;
    let entries = serde_json::from_slice::<Entries>(json)
        .map_err(|e| err(what, format!("the header is not a valid safetensors header: {e}")))?
        .0;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, e) in entries {
        let dtype = match e.dtype.as_str() {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            other => {
                return Err(PupilError::Unsupported(format!(
                    "tensor `{name}` of safetensors {what} has dtype {other}; Pupil converts F32, F16 and BF16"
                )))
            }
        };
        let [begin, end] = e.data_offsets;
        if begin > end || end > data_len {
            return Err(err(
                what,
                format!("tensor `{name}` spans bytes {begin}..{end} of a {data_len}-byte data section"),
            ));
        }
        let bytes = e.shape.0.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d));
        if bytes != Some(end - begin) {
            return Err(err(
                what,
                format!(
                    "tensor `{name}` of shape {:?} {} takes {} bytes, its offsets give {}",
                    e.shape.0,
                    e.dtype,
                    bytes.map_or("more than 2^64".into(), |b| b.to_string()),
                    end - begin
                ),
            ));
        }
        tensors.push(StTensor { name, dtype, shape: e.shape.0, start: data_start + begin, len: end - begin });
    }
    let mut spans: Vec<&StTensor> = tensors.iter().filter(|t| t.len > 0).collect();
    spans.sort_unstable_by_key(|t| t.start);
    for w in spans.windows(2) {
        if w[1].start < w[0].start + w[0].len {
            return Err(err(what, format!("tensors `{}` and `{}` overlap", w[0].name, w[1].name)));
        }
    }
    Ok(tensors)
}

/// Read and parse a safetensors file's header: 8 bytes, then exactly the JSON they announce
/// (checked against the limit and the file's length first).
pub async fn read_safetensors_header<S: ModelSource + ?Sized>(source: &S, what: &str) -> Result<Vec<StTensor>> {
    let size = source.len();
    if size < 8 {
        return Err(PupilError::Truncated { what: format!("safetensors {what}"), needed: 8, have: size });
    }
    let first = source.read_at(0, 8).await?;
    let n = u64::from_le_bytes(first.as_slice().try_into().map_err(|_| err(what, "short read".into()))?);
    if n > MAX_SAFETENSORS_HEADER {
        return Err(PupilError::TooLarge {
            what: format!("the header of safetensors {what}"),
            bytes: n,
            limit: MAX_SAFETENSORS_HEADER,
        });
    }
    if 8 + n > size {
        return Err(PupilError::Truncated {
            what: format!("safetensors {what} (its header)"),
            needed: 8 + n,
            have: size,
        });
    }
    let json = source.read_at(8, n).await?;
    parse_json_header(&json, size, what)
}
