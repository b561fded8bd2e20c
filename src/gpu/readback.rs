//! GPU → CPU copies that work natively and in the browser: the map callback completes a
//! channel; natively we drive it with a blocking poll, in the browser the event loop does.

use futures_channel::oneshot;

use super::context::GpuContext;
use crate::error::{PupilError, Result};

pub(crate) async fn read_buffer(ctx: &GpuContext, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
    ctx.check_device()?;
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("pupil readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    ctx.queue.submit([encoder.finish()]);
    ctx.stats.lock().unwrap().submits += 1;

    let (tx, rx) = oneshot::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| ctx.lost_or(PupilError::Readback(e.to_string())))?;
    // A lost device fails the map (or drops its callback): report the loss, not the symptom.
    rx.await
        .map_err(|_| ctx.lost_or(PupilError::Readback("the map callback was dropped".into())))?
        .map_err(|e| ctx.lost_or(PupilError::Readback(e.to_string())))?;
    let bytes = staging.get_mapped_range(..).map_err(|e| ctx.lost_or(PupilError::Readback(e.to_string())))?.to_vec();
    staging.unmap();
    if let Some(e) = ctx.take_gpu_error() {
        return Err(e);
    }
    Ok(bytes)
}
