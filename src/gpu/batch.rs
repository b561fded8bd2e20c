//! Recording many kernel dispatches and submitting them together: one compute pass, one
//! parameter upload and one queue submit per batch.
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
    recorded: Vec<Recorded>,
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
        Batch { ctx, params: Vec::new(), recorded: Vec::new() }
    }

    pub fn context(&self) -> &'c GpuContext {
        self.ctx
    }

    pub fn len(&self) -> usize {
        self.recorded.len()
    }
    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
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
        self.recorded.push(Recorded {
            key: key.clone(),
            pipeline,
            params_offset: params_offset as u64,
            params_size: params_size as u64,
            bindings,
            groups,
        });
        Ok(())
    }

    /// Encode everything recorded into one compute pass and submit it.
    pub fn submit(self) {
        if self.recorded.is_empty() {
            return;
        }
        let ctx = self.ctx;
        let mut pool = ctx.params_pool.lock().unwrap();
        let need = self.params.len() as u64;
        if pool.as_ref().is_none_or(|b| b.size() < need) {
            *pool = Some(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("pupil params"),
                size: need.next_power_of_two().max(64 * 1024),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let params_buf = pool.as_ref().unwrap();
        ctx.queue.write_buffer(params_buf, 0, &self.params);

        let bind_groups: Vec<wgpu::BindGroup> = self
            .recorded
            .iter()
            .map(|r| {
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
            })
            .collect();

        let mut encoder =
            ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pupil batch") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("pupil"), timestamp_writes: None });
            for (r, bg) in self.recorded.iter().zip(&bind_groups) {
                pass.set_pipeline(&r.pipeline);
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(r.groups[0], r.groups[1], r.groups[2]);
            }
        }
        ctx.queue.submit([encoder.finish()]);
        let mut stats = ctx.stats.lock().unwrap();
        stats.dispatches += self.recorded.len() as u64;
        stats.compute_passes += 1;
        stats.submits += 1;
    }
}
