//! Opening the GPU: adapter choice, optional features (f16, subgroups), limits, and the
//! capabilities the ops use to pick kernel variants.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::memory::MemoryTracker;
use super::pipelines::PipelineCache;
use crate::error::{PupilError, Result};

/// How to open the device. `Default` asks for everything the adapter has; the `allow_*`
/// switches force a feature off so both kernel paths can be tested on one machine.
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Use f16 storage (with f32 accumulation) when the adapter has `shader-f16`.
    pub allow_f16: bool,
    /// Use subgroup reductions when the adapter has subgroups.
    pub allow_subgroups: bool,
    /// Pretend the storage-binding limit is at most this many bytes (to test the
    /// split-binding paths on a machine whose real limit is large).
    pub max_storage_binding: Option<u64>,
    pub power_preference: wgpu::PowerPreference,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            allow_f16: true,
            allow_subgroups: true,
            max_storage_binding: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
        }
    }
}

impl ContextOptions {
    /// Defaults overridden by the environment (native only; ignored in the browser):
    /// `PUPIL_NO_F16=1`, `PUPIL_NO_SUBGROUPS=1`, `PUPIL_MAX_STORAGE_BINDING=<bytes>`.
    pub fn from_env() -> Self {
        #[cfg_attr(target_arch = "wasm32", allow(unused_mut))]
        let mut o = ContextOptions::default();
        #[cfg(not(target_arch = "wasm32"))]
        {
            let set = |k: &str| std::env::var(k).map(|v| v != "0" && !v.is_empty()).unwrap_or(false);
            if set("PUPIL_NO_F16") {
                o.allow_f16 = false;
            }
            if set("PUPIL_NO_SUBGROUPS") {
                o.allow_subgroups = false;
            }
            if let Ok(v) = std::env::var("PUPIL_MAX_STORAGE_BINDING") {
                o.max_storage_binding = v.parse().ok();
            }
        }
        o
    }
}

/// What the opened device can do, as the ops see it.
#[derive(Clone, Debug, Serialize)]
pub struct Capabilities {
    /// f16 storage path enabled (adapter has `shader-f16` and it was allowed).
    pub f16: bool,
    /// Subgroup reductions enabled (adapter has subgroups and they were allowed).
    pub subgroups: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// Largest storage buffer binding, after any artificial lowering.
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_stage: u32,
    pub min_storage_offset_alignment: u32,
    pub min_uniform_offset_alignment: u32,
}

/// Everything an op needs to run: device, queue, capabilities, pipeline cache, memory
/// accounting and a small pool for per-dispatch parameters.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    /// Features the adapter offers (not all of them are enabled on the device).
    pub adapter_features: wgpu::Features,
    pub caps: Capabilities,
    pub memory: MemoryTracker,
    pub(crate) pipelines: PipelineCache,
    pub(crate) params_pool: Mutex<Option<wgpu::Buffer>>,
    pub(crate) stats: Mutex<DispatchStats>,
    /// First uncaptured GPU error (validation, out of memory) since last taken.
    gpu_error: Arc<Mutex<Option<PupilError>>>,
    /// Set for good when the device is lost; every later call fails with `DeviceLost`.
    lost: Arc<Mutex<Option<String>>>,
}

/// An uncaptured wgpu error as a typed error.
pub fn classify_gpu_error(e: &wgpu::Error) -> PupilError {
    match e {
        wgpu::Error::OutOfMemory { .. } => PupilError::OutOfMemory(e.to_string()),
        _ => PupilError::Gpu(e.to_string()),
    }
}

/// Counters for the engine's per-token reports.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DispatchStats {
    pub dispatches: u64,
    pub compute_passes: u64,
    pub submits: u64,
}

impl GpuContext {
    /// Open the best adapter with the given options.
    pub async fn new(options: ContextOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: options.power_preference,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                PupilError::NoAdapter(format!("{e} (is WebGPU enabled, or a Vulkan/Metal/DX12 driver installed?)"))
            })?;
        Self::from_adapter(adapter, options).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter, options: ContextOptions) -> Result<Self> {
        let adapter_info = adapter.get_info();
        let adapter_features = adapter.features();
        let adapter_limits = adapter.limits();

        let f16 = options.allow_f16 && adapter_features.contains(wgpu::Features::SHADER_F16);
        let subgroups = options.allow_subgroups && adapter_features.contains(wgpu::Features::SUBGROUP);
        let mut required_features = wgpu::Features::empty();
        if f16 {
            required_features |= wgpu::Features::SHADER_F16;
        }
        if subgroups {
            required_features |= wgpu::Features::SUBGROUP;
        }
        // Ask for the adapter's own limits: the defaults (128 MiB bindings, 256 MiB buffers)
        // are far below what real GPUs and models need.
        let required_limits = adapter_limits.clone();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("pupil"),
                required_features,
                required_limits: required_limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| PupilError::RequestDevice(e.to_string()))?;

        let mut max_storage_binding = required_limits.max_storage_buffer_binding_size;
        if let Some(cap) = options.max_storage_binding {
            max_storage_binding = max_storage_binding.min(cap);
        }
        let caps = Capabilities {
            f16,
            subgroups,
            subgroup_min_size: adapter_info.subgroup_min_size,
            subgroup_max_size: adapter_info.subgroup_max_size,
            max_storage_binding,
            max_buffer_size: required_limits.max_buffer_size,
            max_workgroup_storage: required_limits.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: required_limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dimension: required_limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_stage: required_limits.max_storage_buffers_per_shader_stage,
            min_storage_offset_alignment: required_limits.min_storage_buffer_offset_alignment,
            min_uniform_offset_alignment: required_limits.min_uniform_buffer_offset_alignment,
        };
        // Errors not caught by a scope land here instead of wgpu's default panic; sync points
        // (readbacks, allocations) turn them into typed errors.
        let gpu_error: Arc<Mutex<Option<PupilError>>> = Arc::default();
        let slot = gpu_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("GPU error: {e}");
            slot.lock().unwrap().get_or_insert_with(|| classify_gpu_error(&e));
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let slot = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            log::error!("GPU device lost ({reason:?}): {msg}");
            slot.lock().unwrap().get_or_insert_with(|| format!("{reason:?}: {msg}"));
        });
        Ok(GpuContext {
            gpu_error,
            lost,
            device,
            queue,
            adapter_info,
            adapter_features,
            caps,
            memory: MemoryTracker::default(),
            pipelines: PipelineCache::default(),
            params_pool: Mutex::new(None),
            stats: Mutex::new(DispatchStats::default()),
        })
    }

    /// Wait until all submitted GPU work has finished (benchmarks; engines never need it).
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| PupilError::Gpu(e.to_string()))?;
        rx.await.map_err(|_| self.lost_or(PupilError::Gpu("the device dropped the wait".into())))?;
        match self.take_gpu_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The first GPU error recorded since the last call, if any; `DeviceLost` (for good)
    /// once the device is gone.
    pub fn take_gpu_error(&self) -> Option<PupilError> {
        let recorded = self.gpu_error.lock().unwrap().take();
        match self.check_device() {
            Err(lost) => Some(lost),
            Ok(()) => recorded,
        }
    }

    /// `Err(DeviceLost)` once the device is lost (driver reset, `destroy()`, the browser's GPU
    /// process gone). Checked before allocating, writing and reading, so a lost device gives
    /// one clear error instead of a cascade of validation errors.
    pub fn check_device(&self) -> Result<()> {
        match &*self.lost.lock().unwrap() {
            Some(why) => Err(PupilError::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.lock().unwrap().is_some()
    }

    /// `DeviceLost` if the device is gone (the real cause of whatever failed), else `other`.
    pub(crate) fn lost_or(&self, other: PupilError) -> PupilError {
        self.check_device().err().unwrap_or(other)
    }

    /// Destroy the device, as a driver reset would (tests of recovery; the browser's
    /// `loseDeviceForTest`). Every later call on this context fails with `DeviceLost`.
    pub fn destroy_device(&self) {
        self.lost.lock().unwrap().get_or_insert_with(|| "destroyed by the application".into());
        self.device.destroy();
    }

    pub fn stats(&self) -> DispatchStats {
        *self.stats.lock().unwrap()
    }

    /// A human-readable report of adapter, backend, features and limits (`pupil info`).
    pub fn describe(&self) -> String {
        let i = &self.adapter_info;
        let c = &self.caps;
        let has = |f: wgpu::Features| {
            if self.adapter_features.contains(f) {
                "yes"
            } else {
                "no"
            }
        };
        let on = |b: bool| if b { "enabled" } else { "disabled" };
        format!(
            "adapter        {} ({:?}, vendor {:#06x}, device {:#06x})\n\
             backend        {:?}\n\
             driver         {} {}\n\
             shader-f16     adapter: {}, f16 path: {}\n\
             subgroups      adapter: {} (size {}..{}), subgroup path: {}\n\
             max buffer     {} MiB\n\
             max binding    {} MiB (storage)\n\
             workgroup      {} invocations, {} KiB shared memory, {} groups per dimension\n\
             storage/stage  {} bindings, offset alignment {} B\n",
            i.name,
            i.device_type,
            i.vendor,
            i.device,
            i.backend,
            i.driver,
            i.driver_info,
            has(wgpu::Features::SHADER_F16),
            on(c.f16),
            has(wgpu::Features::SUBGROUP),
            c.subgroup_min_size,
            c.subgroup_max_size,
            on(c.subgroups),
            c.max_buffer_size >> 20,
            c.max_storage_binding >> 20,
            c.max_invocations_per_workgroup,
            c.max_workgroup_storage / 1024,
            c.max_workgroups_per_dimension,
            c.max_storage_buffers_per_stage,
            c.min_storage_offset_alignment,
        )
    }
}
