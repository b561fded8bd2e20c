//! Recording many kernel dispatches and submitting them together: one parameter upload and one
//! queue submit per batch, the dispatches in one compute pass or, split by `next_pass` and
//! buffer copies, in several passes of the same command buffer.
//!
//! Each dispatch carries a small uniform block of parameters (shapes, strides, constants).
//! All blocks of a batch go into one pooled uniform buffer with a single `write_buffer`;
//! because queue writes are ordered with submits, the pool can be reused by the next batch
//! while earlier work is still in flight.

use std::sync::Arc;

use super::context::GpuContext;
use super::shader::KernelKey;
use super::tensor::{Allocation, Tensor};
use crate::error::{PupilError, Result};

/// One step of a batch, encoded in order.
enum Step {
    Dispatch(Recorded),
    /// End the current compute pass; the next dispatch opens a new one.
    PassBreak,
    /// `copy_buffer_to_buffer` between passes.
    Copy {
        src: (Arc<Allocation>, u64),
        dst: (Arc<Allocation>, u64),
        size: u64,
    },
    /// `clear_buffer` (zeroes) between passes.
    Clear {
        dst: (Arc<Allocation>, u64),
        size: u64,
    },
}

struct Recorded {
    key: KernelKey,
    pipeline: Arc<wgpu::ComputePipeline>,
    params_offset: u64,
    params_size: u64,
    bindings: Vec<(Arc<Allocation>, u64, u64)>,
    groups: [u32; 3],
}

pub struct Batch<'c> {
    ctx: &'c GpuContext,
    params: Vec<u8>,
    steps: Vec<Step>,
    dispatches: usize,
}

/// A 2-D grid of workgroups covering `n` groups within the per-dimension limit; kernels
/// rebuild the linear id as `wg.x + wg.y * num_workgroups.x` and skip ids past `n`.
pub fn grid_for(ctx: &GpuContext, n: u32) -> [u32; 3] {
    let max = ctx.caps.max_workgroups_per_dimension.max(1);
    if n <= max {
        [n.max(1), 1, 1]
    } else {
        [max, n.div_ceil(max), 1]
    }
}

impl<'c> Batch<'c> {
    pub fn new(ctx: &'c GpuContext) -> Self {
        Batch { ctx, params: Vec::new(), steps: Vec::new(), dispatches: 0 }
    }

    pub fn context(&self) -> &'c GpuContext {
        self.ctx
    }

    /// Number of dispatches recorded.
    pub fn len(&self) -> usize {
        self.dispatches
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Close the current compute pass: later dispatches go into a new pass of the same submit.
    pub fn next_pass(&mut self) {
        self.steps.push(Step::PassBreak);
    }

    /// Copy `src` into `dst` (same byte size) between passes, in submission order.
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) -> Result<()> {
        let size = src.len() as u64 * src.dtype().size_bytes();
        if size != dst.len() as u64 * dst.dtype().size_bytes() || !size.is_multiple_of(4) {
            return Err(PupilError::shape(
                "Batch::copy",
                format!("{size}-byte source, {:?} destination (sizes must match, multiple of 4)", dst.shape()),
            ));
        }
        self.steps.push(Step::Copy {
            src: (src.alloc.clone(), src.offset_bytes()),
            dst: (dst.alloc.clone(), dst.offset_bytes()),
            size,
        });
        Ok(())
    }

    /// Zero `dst` between passes, in submission order (a gradient that dispatches accumulate
    /// into and a batch reuses). Its bytes are rounded up to whole words, which must lie in
    /// its buffer.
    pub fn clear(&mut self, dst: &Tensor) -> Result<()> {
        let size = (dst.len() as u64 * dst.dtype().size_bytes()).next_multiple_of(4);
        let offset = dst.offset_bytes();
        if !offset.is_multiple_of(4) || offset + size > dst.alloc.size {
            return Err(PupilError::shape(
                "Batch::clear",
                format!("{size} bytes at {offset} of a {}-byte buffer (whole words inside it)", dst.alloc.size),
            ));
        }
        self.steps.push(Step::Clear { dst: (dst.alloc.clone(), offset), size });
        Ok(())
    }

    /// Record one dispatch of `key` with `params` at binding 0 and `tensors` at bindings
    /// 1.. in order. Checks every binding against the adapter's limits first.
    pub fn dispatch(&mut self, key: &KernelKey, params: &[u8], tensors: &[&Tensor], groups: [u32; 3]) -> Result<()> {
        let caps = &self.ctx.caps;
        if tensors.len() as u32 > caps.max_storage_buffers_per_stage {
            return Err(PupilError::arg(
                key.entry,
                format!("{} storage bindings, adapter allows {}", tensors.len(), caps.max_storage_buffers_per_stage),
            ));
        }
        let mut bindings = Vec::with_capacity(tensors.len());
        for t in tensors {
            let size = t.binding_size();
            if size > caps.max_storage_binding {
                return Err(PupilError::TooLarge {
                    what: format!("{} binding of {:?} {}", key.entry, t.shape(), t.dtype().name()),
                    bytes: size,
                    limit: caps.max_storage_binding,
                });
            }
            if t.offset_bytes() % caps.min_storage_offset_alignment as u64 != 0 {
                return Err(PupilError::arg(
                    key.entry,
                    format!(
                        "view at byte {} is not aligned to {} bytes",
                        t.offset_bytes(),
                        caps.min_storage_offset_alignment
                    ),
                ));
            }
            bindings.push((t.alloc.clone(), t.offset_bytes(), size));
        }
        if groups.iter().any(|&g| g > caps.max_workgroups_per_dimension) {
            return Err(PupilError::arg(key.entry, format!("grid {groups:?} over the per-dimension limit")));
        }
        let pipeline = self.ctx.pipeline(key)?;
        let align = caps.min_uniform_offset_alignment.max(16) as usize;
        let params_offset = self.params.len().next_multiple_of(align);
        let params_size = params.len().max(16).next_multiple_of(16);
        self.params.resize(params_offset, 0);
        self.params.extend_from_slice(params);
        self.params.resize(params_offset + params_size, 0);
        self.steps.push(Step::Dispatch(Recorded {
            key: key.clone(),
            pipeline,
            params_offset: params_offset as u64,
            params_size: params_size as u64,
            bindings,
            groups,
        }));
        self.dispatches += 1;
        Ok(())
    }

    /// Encode everything recorded (its compute passes and copies, in order) and submit it.
    /// On a lost device nothing is submitted; the next readback reports `DeviceLost`.
    pub fn submit(self) {
        if self.steps.is_empty() || self.ctx.is_lost() {
            return;
        }
        let ctx = self.ctx;
        let mut pool = ctx.params_pool.lock().unwrap();
        let need = (self.params.len() as u64).max(16);
        if pool.as_ref().is_none_or(|b| b.size() < need) {
            *pool = Some(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pupil params"),
                size: need.next_power_of_two().max(64 * 1024),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let params_buf = pool.as_ref().unwrap();
        if !self.params.is_empty() {
            ctx.queue.write_buffer(params_buf, 0, &self.params);
        }

        let mut encoder =
            ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pupil batch") });
        let mut passes = 0;
        let mut steps = self.steps.iter().peekable();
        while let Some(step) = steps.next() {
            match step {
                Step::PassBreak => {}
                Step::Copy { src, dst, size } => {
                    encoder.copy_buffer_to_buffer(&src.0.buffer, src.1, &dst.0.buffer, dst.1, *size)
                }
                Step::Clear { dst, size } => encoder.clear_buffer(&dst.0.buffer, dst.1, Some(*size)),
                Step::Dispatch(first) => {
                    // A pass runs until the next break or copy.
                    let mut run = vec![first];
                    while let Some(Step::Dispatch(r)) = steps.peek() {
                        run.push(r);
                        steps.next();
                    }
                    let bind_groups: Vec<wgpu::BindGroup> =
                        run.iter().map(|r| bind_group(ctx, params_buf, r)).collect();
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("pupil"),
                        timestamp_writes: None,
                    });
                    for (r, bg) in run.iter().zip(&bind_groups) {
                        pass.set_pipeline(&r.pipeline);
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups(r.groups[0], r.groups[1], r.groups[2]);
                    }
                    passes += 1;
                }
            }
        }
        ctx.queue.submit([encoder.finish()]);
        let mut stats = ctx.stats.lock().unwrap();
        stats.dispatches += self.dispatches as u64;
        stats.compute_passes += passes;
        stats.submits += 1;
    }
}

/// Binding 0: the dispatch's parameter block; bindings 1..: its tensors in order.
fn bind_group(ctx: &GpuContext, params_buf: &wgpu::Buffer, r: &Recorded) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params_buf,
            offset: r.params_offset,
            size: wgpu::BufferSize::new(r.params_size),
        }),
    }];
    for (i, (alloc, offset, size)) in r.bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &alloc.buffer,
                offset: *offset,
                size: wgpu::BufferSize::new(*size),
            }),
        });
    }
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(r.key.entry),
        layout: &r.pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}
