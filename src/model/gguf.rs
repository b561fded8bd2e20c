//! GGUF files (versions 2 and 3): reading the header (metadata and tensor directory) from a
//! byte prefix of the file, and writing complete files (for `pupil synth` and tests).
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! metadata entries (key string, value type u32, value); tensor infos (name string, n_dims
//! u32, dims u64 × n_dims, GGML type u32, offset u64 relative to the data section); padding to
//! `general.alignment` (default 32); the data section. Strings are a u64 length + UTF-8 bytes.
//!
//! The reader never trusts a count or length: every one is checked against the bytes that
//! remain before anything is allocated, dimensions and sizes are checked for overflow, and
//! tensors must lie inside the file and not overlap. Unknown tensor types are reported by
//! name. Errors are `PupilError::Format` with the byte offset where reading stopped.

use std::collections::HashMap;

use crate::error::{PupilError, Result};
use crate::quant::QuantType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest number of dimensions ggml supports.
pub const MAX_DIMS: usize = 4;

/// A metadata value. Arrays hold values of one type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer type as u64 (negative values refused).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any numeric type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row length).
    pub dims: Vec<u64>,
    pub ty: QuantType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// (rows, columns) of the tensor viewed as a matrix: columns = `dims[0]`.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        (self.n_elements() as usize / cols.max(1), cols)
    }
}

/// A parsed GGUF header.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
    index: HashMap<String, usize>,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Bytes a complete file must have: the end of the last tensor's data.
    pub fn file_size(&self) -> u64 {
        self.tensors.iter().map(|t| self.data_offset + t.offset + t.size).max().unwrap_or(self.data_offset)
    }

    /// The bytes of tensor `t` within the whole file `file`.
    pub fn tensor_data<'a>(&self, file: &'a [u8], t: &TensorInfo) -> Result<&'a [u8]> {
        let start = (self.data_offset + t.offset) as usize;
        file.get(start..start + t.size as usize).ok_or_else(|| {
            format_err(
                start as u64,
                format!(
                    "tensor {} ends at byte {}, past the end of a {}-byte file",
                    t.name,
                    start as u64 + t.size,
                    file.len()
                ),
            )
        })
    }
}

fn format_err(at: u64, detail: String) -> PupilError {
    PupilError::Format(format!("GGUF at byte {at}: {detail}"))
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(PupilError::Truncated {
                what: format!("GGUF header ({what} at byte {})", self.pos),
                needed: (self.pos as u64).saturating_add(n),
                have: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, "u16")?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, "u32")?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, "u64")?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64()?;
        let bytes = self.take(len, "string")?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format_err(at, "string is not UTF-8".into()))
    }
    /// Fail early if `count` items of at least `min_size` bytes cannot fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        let left = (self.buf.len() - self.pos) as u64;
        if count.checked_mul(min_size).is_none_or(|n| n > left) {
            return Err(PupilError::Truncated {
                what: format!("GGUF header ({count} {what} at byte {})", self.pos),
                needed: (self.pos as u64).saturating_add(count.saturating_mul(min_size)),
                have: self.buf.len() as u64,
            });
        }
        Ok(())
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        let at = self.pos as u64;
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format_err(at, format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth > 0 {
                    return Err(format_err(at, "nested arrays are not supported".into()));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err(format_err(at, "nested arrays are not supported".into())),
                    t => return Err(format_err(at, format!("unknown array element type {t}"))),
                };
                self.check_count(count, min, "array elements")?;
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(format_err(at, format!("unknown metadata value type {t}"))),
        })
    }
}

/// GGML type ids Pupil does not read, by name, for clear errors.
fn ggml_type_name(id: u32) -> String {
    let known = [
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    known.iter().find(|k| k.0 == id).map_or(format!("GGML type {id}"), |k| format!("{} (GGML type {id})", k.1))
}

/// Parse the header from `buf`, a prefix of the file (or all of it). If the prefix is too
/// short, the error is `PupilError::Truncated` with the number of bytes needed, so a
/// streaming loader can read more and try again.
pub fn parse_header(buf: &[u8]) -> Result<GgufHeader> {
    let mut r = Reader { buf, pos: 0 };
    if r.take(4, "magic")? != MAGIC {
        return Err(format_err(0, "not a GGUF file (bad magic)".into()));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format_err(4, format!("GGUF version {version} is not supported (2 and 3 are)")));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor
    // info at least 8 + 4 + 8 + 4 + 8.
    r.check_count(n_kv, 13, "metadata entries")?;
    let mut metadata = Vec::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        metadata.push((key, value));
    }
    r.check_count(n_tensors, 32, "tensor infos")?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let at = r.pos as u64;
        let name = r.string()?;
        let n_dims = r.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format_err(at, format!("tensor {name} has {n_dims} dimensions (1..={MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let ty_id = r.u32()?;
        let offset = r.u64()?;
        let ty = QuantType::from_ggml_id(ty_id).ok_or_else(|| {
            PupilError::Unsupported(format!(
                "tensor {name} has type {}, which Pupil cannot read",
                ggml_type_name(ty_id)
            ))
        })?;
        let n: u64 = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format_err(at, format!("tensor {name}: dimensions {dims:?} overflow")))?;
        if n == 0 || dims[0] % ty.block_size() as u64 != 0 {
            return Err(format_err(
                at,
                format!("tensor {name}: dimensions {dims:?} do not fit {} blocks of {}", ty.name(), ty.block_size()),
            ));
        }
        let size = (n / ty.block_size() as u64)
            .checked_mul(ty.block_bytes() as u64)
            .ok_or_else(|| format_err(at, format!("tensor {name}: size overflows")))?;
        tensors.push(TensorInfo { name, dims, ty, offset, size });
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => return Err(format_err(0, format!("general.alignment {v:?} is not a power of two"))),
        },
    };
    let data_offset = (r.pos as u64).next_multiple_of(alignment);
    // Tensors: aligned, non-overlapping, names unique.
    let mut index = HashMap::with_capacity(tensors.len());
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if t.offset % alignment != 0 {
            return Err(format_err(
                data_offset,
                format!("tensor {} at data offset {} is not aligned to {alignment}", t.name, t.offset),
            ));
        }
        let end = t.offset.checked_add(t.size).and_then(|e| e.checked_add(data_offset));
        if end.is_none() {
            return Err(format_err(data_offset, format!("tensor {} offset overflows", t.name)));
        }
        if index.insert(t.name.clone(), i).is_some() {
            return Err(format_err(data_offset, format!("tensor name {} appears twice", t.name)));
        }
        spans.push((t.offset, t.offset + t.size, i));
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format_err(
                data_offset,
                format!("tensors {} and {} overlap", tensors[w[0].2].name, tensors[w[1].2].name),
            ));
        }
    }
    Ok(GgufHeader { version, metadata, tensors, alignment, data_offset, index })
}

impl GgufHeader {
    /// A header made of parts already checked by `parse_header` (the shards of a split
    /// file, see `model::split`); tensor names must still be unique across them.
    pub(crate) fn assemble(
        version: u32,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorInfo>,
        alignment: u64,
        data_offset: u64,
    ) -> Result<GgufHeader> {
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(PupilError::Format(format!("tensor name {} appears in two shards", t.name)));
            }
        }
        Ok(GgufHeader { version, metadata, tensors, alignment, data_offset, index })
    }
}

/// Builds a GGUF file in memory: metadata, then tensors (GGUF bytes of their type).
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, QuantType, Vec<u8>)>,
    alignment: Option<u64>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &str, value: Value) -> &mut Self {
        if key == "general.alignment" {
            self.alignment = value.as_u64();
        }
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Add a tensor with ggml-order `dims` (`dims[0]` = row length) and its GGUF bytes.
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: QuantType, data: Vec<u8>) -> Result<&mut Self> {
        let n: u64 = dims.iter().product();
        let want = ty.row_bytes(n as usize)?;
        if data.len() != want || !dims[0].is_multiple_of(ty.block_size() as u64) {
            return Err(PupilError::shape(
                "GgufWriter::add_tensor",
                format!("{name}: {} bytes for {dims:?} {}", data.len(), ty.name()),
            ));
        }
        self.tensors.push((name.to_string(), dims.to_vec(), ty, data));
        Ok(self)
    }

    /// The complete file (version 3).
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment.unwrap_or(DEFAULT_ALIGNMENT);
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_string(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            write_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, ty, data) in &self.tensors {
            write_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.ggml_id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        let data_start = (out.len() as u64).next_multiple_of(align);
        out.resize(data_start as usize, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            let elem = a.first().map_or(0, Value::type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                write_value(out, x);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
