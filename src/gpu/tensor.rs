//! Tensors: a GPU buffer (or a view into one) with a shape and an element type.
//! Every allocation is counted by the context's [`MemoryTracker`](super::MemoryTracker).

use std::sync::Arc;

use serde::Serialize;

use super::context::GpuContext;
use super::memory::MemoryTracker;
use super::readback::read_buffer;
use crate::error::{PupilError, Result};

/// Element types a tensor can hold. Block-quantized weight formats come with [qmatmul].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    pub fn size_bytes(self) -> u64 {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16)
    }
}

/// One GPU buffer, freed (and un-counted) when the last tensor viewing it is dropped.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) size: u64,
    tracker: MemoryTracker,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.tracker.freed(self.size);
    }
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub(crate) alloc: Arc<Allocation>,
    /// Byte offset of this view in the buffer.
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

/// Round up to the 4-byte granularity WebGPU needs for copies and storage bindings.
fn pad4(bytes: u64) -> u64 {
    (bytes + 3) & !3
}

impl Tensor {
    /// An uninitialised tensor (contents unspecified; in practice zeroed by wgpu).
    pub fn empty(ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let elems: usize = shape.iter().product();
        Self::allocate(ctx, pad4(elems as u64 * dtype.size_bytes()), shape, dtype, "tensor")
    }

    /// A buffer of `bytes` bytes viewed as `shape`; `bytes` may exceed the view (tests put a
    /// canary past the end).
    pub fn allocate(ctx: &GpuContext, bytes: u64, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let bytes = pad4(bytes.max(4));
        let elems: u64 = shape.iter().map(|&d| d as u64).product();
        if elems * dtype.size_bytes() > bytes {
            return Err(PupilError::shape(
                "allocate",
                format!("{shape:?} {} does not fit {bytes} bytes", dtype.name()),
            ));
        }
        ctx.check_device()?;
        if bytes > ctx.caps.max_buffer_size {
            return Err(PupilError::TooLarge {
                what: format!("{label} {shape:?} {}", dtype.name()),
                bytes,
                limit: ctx.caps.max_buffer_size,
            });
        }
        let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.memory.allocated(bytes);
        Ok(Tensor {
            alloc: Arc::new(Allocation { buffer, size: bytes, tracker: ctx.memory.clone() }),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Upload f32 values, converted to `dtype` (F32 or F16).
    pub fn from_f32(ctx: &GpuContext, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Tensor::empty(ctx, shape, dtype)?;
        t.write_f32(ctx, data)?;
        Ok(t)
    }

    pub fn from_u32(ctx: &GpuContext, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::empty(ctx, shape, DType::U32)?;
        t.write_bytes(ctx, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Encode f32 values as this tensor's element type.
    pub fn encode_f32(dtype: DType, data: &[f32]) -> Result<Vec<u8>> {
        Ok(match dtype {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::F16 => {
                let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
            DType::U32 => return Err(PupilError::dtype("encode_f32", "cannot store floats in a u32 tensor")),
        })
    }

    pub fn write_f32(&self, ctx: &GpuContext, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(PupilError::shape("write", format!("{} values for a tensor of {}", data.len(), self.len())));
        }
        self.write_bytes(ctx, &Tensor::encode_f32(self.dtype, data)?)
    }

    /// Write raw bytes at the start of this view (padded to 4 bytes with zeros; the padding
    /// must still lie inside the buffer).
    pub fn write_bytes(&self, ctx: &GpuContext, bytes: &[u8]) -> Result<()> {
        ctx.check_device()?;
        let padded = pad4(bytes.len() as u64);
        if self.offset + padded > self.alloc.size {
            return Err(PupilError::shape(
                "write",
                format!("{} bytes past the end of a {}-byte buffer", bytes.len(), self.alloc.size),
            ));
        }
        if padded == bytes.len() as u64 {
            ctx.queue.write_buffer(&self.alloc.buffer, self.offset, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(padded as usize, 0);
            ctx.queue.write_buffer(&self.alloc.buffer, self.offset, &v);
        }
        Ok(())
    }

    /// Fill the whole underlying buffer (not just this view) with a repeated 32-bit word.
    pub fn fill_buffer_u32(&self, ctx: &GpuContext, word: u32) {
        let v = vec![word; (self.alloc.size / 4) as usize];
        ctx.queue.write_buffer(&self.alloc.buffer, 0, bytemuck::cast_slice(&v));
    }

    /// A view of `shape` starting `elem_offset` elements into this tensor. Views that are
    /// bound to a kernel must start at a multiple of the adapter's storage offset alignment.
    pub fn view(&self, elem_offset: usize, shape: &[usize]) -> Result<Tensor> {
        let elems: usize = shape.iter().product();
        let offset = self.offset + elem_offset as u64 * self.dtype.size_bytes();
        if elem_offset + elems > self.len() {
            return Err(PupilError::shape(
                "view",
                format!("view {elem_offset}+{shape:?} outside a tensor of {}", self.len()),
            ));
        }
        Ok(Tensor { alloc: self.alloc.clone(), offset, shape: shape.to_vec(), dtype: self.dtype })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of this view, padded to 4 (what a binding covers).
    pub fn binding_size(&self) -> u64 {
        pad4((self.len() as u64 * self.dtype.size_bytes()).max(4))
    }
    pub fn offset_bytes(&self) -> u64 {
        self.offset
    }
    /// Size of the whole underlying buffer.
    pub fn buffer_size(&self) -> u64 {
        self.alloc.size
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.alloc.buffer
    }

    /// Read the view back as f32 (converting from f16 if needed).
    pub async fn read_f32(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(ctx).await?;
        let n = self.len();
        Ok(match self.dtype {
            DType::F32 => bytemuck::cast_slice::<u8, f32>(&bytes)[..n].to_vec(),
            DType::F16 => bytemuck::cast_slice::<u8, half::f16>(&bytes)[..n].iter().map(|h| h.to_f32()).collect(),
            DType::U32 => return Err(PupilError::dtype("read_f32", "tensor holds u32")),
        })
    }

    pub async fn read_u32(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        if self.dtype != DType::U32 {
            return Err(PupilError::dtype("read_u32", format!("tensor holds {}", self.dtype.name())));
        }
        let bytes = self.read_bytes(ctx).await?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes)[..self.len()].to_vec())
    }

    /// The view's bytes, padded to 4.
    pub async fn read_bytes(&self, ctx: &GpuContext) -> Result<Vec<u8>> {
        read_buffer(ctx, &self.alloc.buffer, self.offset, self.binding_size()).await
    }

    /// The whole underlying buffer's bytes (tests read canaries past a view's end).
    pub async fn read_buffer_bytes(&self, ctx: &GpuContext) -> Result<Vec<u8>> {
        read_buffer(ctx, &self.alloc.buffer, 0, self.alloc.size).await
    }
}
