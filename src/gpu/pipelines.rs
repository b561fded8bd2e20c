//! Compiled pipelines, cached by [`KernelKey`] (shader, entry, defines).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::context::GpuContext;
use super::shader::{render, Dialect, KernelKey};
use crate::error::{PupilError, Result};

#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<KernelKey, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GpuContext {
    /// The pipeline for `key`, compiled on first use. Compilation errors of our own shaders
    /// are bugs caught by the variant tests; at run time they surface through the
    /// context's error slot (see [`GpuContext::take_gpu_error`]).
    pub fn pipeline(&self, key: &KernelKey) -> Result<Arc<wgpu::ComputePipeline>> {
        if key.needs_f16() && !self.caps.f16 {
            return Err(PupilError::MissingFeature("shader-f16"));
        }
        if key.needs_subgroups() && !self.caps.subgroups {
            return Err(PupilError::MissingFeature("subgroups"));
        }
        if let Some(p) = self.pipelines.map.lock().unwrap().get(key) {
            return Ok(p.clone());
        }
        let source = render(key, Dialect::of_this_build())?;
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(key.shader),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key.entry),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        }));
        self.pipelines.map.lock().unwrap().insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// The keys of every pipeline compiled so far (tests check each is a listed variant).
    pub fn compiled_kernels(&self) -> Vec<KernelKey> {
        self.pipelines.map.lock().unwrap().keys().cloned().collect()
    }

    /// Compile `key` inside an error scope and report any error as a typed value (used by
    /// the variant tests natively and in the browser).
    pub async fn check_pipeline(&self, key: &KernelKey) -> Result<()> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let made = self.pipeline(key);
        let err = scope.pop().await;
        made?;
        match err {
            None => Ok(()),
            Some(e) => {
                self.pipelines.map.lock().unwrap().remove(key);
                Err(PupilError::Shader { shader: key.to_string(), detail: e.to_string() })
            }
        }
    }
}
