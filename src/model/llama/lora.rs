//! LoRA adapters over the frozen (quantized) projections of a llama-family model (Hu et al.
//! 2021, as PEFT implements them): `y = x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ` with A `[r, in]` and B
//! `[out, r]` trainable f32 matrices, A initialised like PEFT (Kaiming-uniform, bound
//! 1/√in) and B zero, so training starts from the base model exactly.
//!
//! Rows of a llama GGUF file's Q and K weights are permuted (see `model::config`): B's rows for
//! those targets follow the file's order. PEFT's layout is HF's order; converting between the
//! two is the exporter's job.

use crate::error::{PupilError, Result};
use crate::gpu::{DType, GpuContext, Tensor};
use crate::rng::SplitMix64;

/// A projection LoRA can adapt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// PEFT's module name (`target_modules`).
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// Its place in [`LoraTarget::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parse `q`, `q_proj`, `gate`, … (the CLI's and the web API's names).
    pub fn parse(s: &str) -> Result<LoraTarget> {
        let s = s.trim().trim_end_matches("_proj");
        LoraTarget::ALL.into_iter().find(|t| t.hf_name().trim_end_matches("_proj") == s).ok_or_else(|| {
            PupilError::arg("LoraTarget::parse", format!("`{s}` is not one of q, k, v, o, gate, up, down"))
        })
    }
}

/// Which projections get adapters, and their size.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    /// The update is scaled by alpha / rank.
    pub alpha: f32,
    pub targets: Vec<LoraTarget>,
    /// PEFT's `lora_dropout`: each adapter's input is dropped with this probability (and the
    /// rest scaled by 1/(1 − p)) while training, its own mask per adapter and per batch
    /// ([`dropout_seed`]); evaluation runs without. 0 turns it off.
    pub dropout: f32,
}

impl LoraConfig {
    /// Rank `rank`, `alpha`, no dropout.
    pub fn new(rank: usize, alpha: f32, targets: Vec<LoraTarget>) -> LoraConfig {
        LoraConfig { rank, alpha, targets, dropout: 0.0 }
    }

    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// The 32-bit seed of the dropout mask of adapter `target` on layer `layer` in the
/// `call`-th training forward pass (0-based) of a trainer seeded with `base`: the high half of
/// SplitMix64's first output for `base ^ call << 24 ^ layer << 4 ^ target index`. The mask
/// itself is `reference::dropout::keep(seed, i, p)` over the adapter's input, row-major
/// `[tokens, in]` (scripts/fixtures/make_train_fixtures.py rebuilds both).
pub fn dropout_seed(base: u64, call: u64, layer: usize, target: LoraTarget) -> u32 {
    let key = base ^ (call << 24) ^ ((layer as u64) << 4) ^ target.index() as u64;
    (SplitMix64::new(key).next_u64() >> 32) as u32
}

/// One adapter's tensors: weights, gradients and AdamW moments (all f32).
pub struct LoraPair {
    pub target: LoraTarget,
    pub in_dim: usize,
    pub out_dim: usize,
    pub a: Tensor,
    pub b: Tensor,
    pub da: Tensor,
    pub db: Tensor,
    pub(crate) moments: [Tensor; 4],
}

/// Every adapter of a model: `layers[l]` holds layer l's, in [`LoraTarget::ALL`] order.
pub struct Lora {
    pub config: LoraConfig,
    pub layers: Vec<Vec<LoraPair>>,
}

impl Lora {
    /// Fresh adapters for `n_layers` layers; `dims(target)` = (in, out) of that projection.
    pub fn new(
        ctx: &GpuContext,
        config: LoraConfig,
        n_layers: usize,
        dims: impl Fn(LoraTarget) -> (usize, usize),
        seed: u64,
    ) -> Result<Lora> {
        const OP: &str = "Lora::new";
        if config.rank == 0 || config.rank > 1024 {
            return Err(PupilError::arg(OP, format!("rank must be 1..=1024, got {}", config.rank)));
        }
        if !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(PupilError::arg(OP, format!("alpha must be positive, got {}", config.alpha)));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(PupilError::arg(OP, format!("dropout must be in [0, 1), got {}", config.dropout)));
        }
        if config.targets.is_empty() {
            return Err(PupilError::arg(OP, "no target projections"));
        }
        let mut targets = config.targets.clone();
        targets.sort();
        targets.dedup();
        let config = LoraConfig { targets, ..config };
        let mut rng = SplitMix64::new(seed);
        let r = config.rank;
        let zeros = |n: usize| Tensor::from_f32(ctx, &vec![0.0; n], &[n], DType::F32);
        let mut layers = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            let mut pairs = Vec::new();
            for &target in &config.targets {
                let (in_dim, out_dim) = dims(target);
                // PEFT: kaiming_uniform_(a=√5) on A, i.e. U(−1/√in, 1/√in); B zero.
                let bound = 1.0 / (in_dim as f32).sqrt();
                let a: Vec<f32> = (0..r * in_dim).map(|_| rng.uniform(-bound, bound)).collect();
                pairs.push(LoraPair {
                    target,
                    in_dim,
                    out_dim,
                    a: Tensor::from_f32(ctx, &a, &[r, in_dim], DType::F32)?,
                    b: Tensor::from_f32(ctx, &vec![0.0; out_dim * r], &[out_dim, r], DType::F32)?,
                    da: zeros(r * in_dim)?,
                    db: zeros(out_dim * r)?,
                    moments: [zeros(r * in_dim)?, zeros(r * in_dim)?, zeros(out_dim * r)?, zeros(out_dim * r)?],
                });
            }
            layers.push(pairs);
        }
        Ok(Lora { config, layers })
    }

    /// Layer `l`'s adapter on `target`, if it has one.
    pub fn get(&self, l: usize, target: LoraTarget) -> Option<&LoraPair> {
        self.layers.get(l)?.iter().find(|p| p.target == target)
    }

    /// Every adapter, layer by layer.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, &LoraPair)> {
        self.layers.iter().enumerate().flat_map(|(l, ps)| ps.iter().map(move |p| (l, p)))
    }

    /// Trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.pairs().map(|(_, p)| self.config.rank * (p.in_dim + p.out_dim)).sum()
    }
}
