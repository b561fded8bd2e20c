//! `pupil-bench`: kernel benchmarks. Prints, from one run on one device, the ceilings
//! (vec4 copy bandwidth, f32 FMA peak) and then quantized GEMV/GEMM figures for every
//! format × shape × M with their ratio to those ceilings.
//!
//!   pupil-bench matmul [--formats Q4_0,Q4_K] [--shapes smollm2-up,...] [--m 1,4,16,128,512]
//!   pupil-bench attention [--contexts 128,1024,8192] [--window 512]
//!   pupil-bench model [--model F.gguf | --synth qwen2-1.5b] [--prompts 128,512] [--batch 1,2,4,8]
//!   pupil-bench train [--synth smollm2-135m] [--rank 16] [--seq 256] [--batch 4] [--steps 3]
//!
//! Rows named `<format>i8` are the int8-activation path (activation quantization included).
//! Times are wall-clock over a batch of `reps` identical dispatches (one submit, then a wait),
//! divided by `reps`: per-dispatch overhead is included, as it is in decoding.

use std::time::Instant;

use clap::{Parser, Subcommand};
use pupil::gpu::{Batch, DType, Tensor};
use pupil::ops::attention::{
    attention_decode_forward, attention_prefill_forward, AttentionConfig, KvCache, KvCacheKind,
};
use pupil::ops::bench::{copy_forward, fma_forward};
use pupil::ops::matmul::{
    matmul_forward, matmul_int8_forward, quantize_activations_forward, QuantizedActivations, GEMV_MAX_M,
};
use pupil::ops::QuantWeight;
use pupil::quant::{random_blocks, QuantType};
use pupil::rng::SplitMix64;
use pupil::{ContextOptions, GpuContext, Result};

#[derive(Parser)]
#[command(name = "pupil-bench", about = "Pupil kernel benchmarks (figures, never pass/fail)")]
struct Cli {
    #[arg(long, global = true)]
    no_f16: bool,
    #[arg(long, global = true)]
    no_subgroups: bool,
    /// Seconds to spend timing each configuration (after one warm-up run).
    #[arg(long, global = true, default_value_t = 0.5)]
    seconds: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy and FMA ceilings only.
    Ceilings,
    /// Quantized matrix products.
    Matmul {
        /// GGUF formats (default: all).
        #[arg(long, value_delimiter = ',')]
        formats: Vec<String>,
        /// Shapes by name (default: all): see `SHAPES`.
        #[arg(long, value_delimiter = ',')]
        shapes: Vec<String>,
        /// Activation rows (M ≤ 8 runs the GEMV kernel, larger the tiled GEMM).
        #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4, 16, 128, 512])]
        m: Vec<usize>,
    },
    /// Attention: decode time against context length (full cache vs a rolling window) and
    /// prefill throughput, for SmolLM2's and Gemma 3's head layouts.
    Attention {
        /// Context lengths for decode.
        #[arg(long, value_delimiter = ',', default_values_t = vec![128, 512, 1024, 2048, 4096, 8192])]
        contexts: Vec<usize>,
        /// Window of the rolling-cache rows.
        #[arg(long, default_value_t = 512)]
        window: usize,
        /// Prompt lengths for prefill.
        #[arg(long, value_delimiter = ',', default_values_t = vec![128, 512])]
        prompts: Vec<usize>,
    },
    /// A whole model: prefill throughput, decode tokens/s per batch size (sequences decoded
    /// together), per-token latency, dispatches and submits per token, GPU memory.
    Model {
        /// GGUF file (default: the cached SmolLM2-135M-Instruct Q4_1).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        /// Instead of a file: a random-weight model of this shape (`pupil synth` presets).
        #[arg(long)]
        synth: Option<String>,
        /// Activations and KV cache in f32 (default: f16 where the adapter has it).
        #[arg(long)]
        f32: bool,
        #[arg(long, value_delimiter = ',', default_values_t = vec![128, 512])]
        prompts: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 4, 8])]
        batch: Vec<usize>,
        /// Decode steps timed per batch size.
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// Context position decoding starts at.
        #[arg(long, default_value_t = 128)]
        at: usize,
    },
    /// LoRA training: tokens/s of forward + backward + AdamW steps and peak GPU memory, with
    /// the FMA ceiling's share (≈ 6·params·tokens FLOPs for the base, plus the recomputed
    /// forward: 8·params·tokens counted). Compare with scripts/bench/train_peft.py (PyTorch +
    /// PEFT, same shape, same batch).
    Train {
        /// GGUF file (default: a random-weight model of --synth's shape).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        #[arg(long, default_value = "smollm2-135m")]
        synth: String,
        #[arg(long, default_value_t = 16)]
        rank: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Timed steps (after one warm-up step).
        #[arg(long, default_value_t = 3)]
        steps: usize,
    },
    /// Speculative decoding (greedy): the target alone against the target verifying a draft's
    /// k guesses per pass; tokens/s, acceptance, tokens per target pass and the speed-up, and
    /// whether the output is the target's.
    Speculative {
        /// Target GGUF (default: a random-weight model of --synth's shape).
        #[arg(long)]
        target: Option<std::path::PathBuf>,
        #[arg(long, default_value = "smollm2-135m")]
        synth: String,
        /// Draft GGUF (same vocabulary; default: the target without most of its layers).
        #[arg(long)]
        draft: Option<std::path::PathBuf>,
        /// Without --draft: the target's layers the draft keeps, e.g. 0-3,29.
        #[arg(long, default_value = "0-3")]
        keep: String,
        #[arg(long, value_delimiter = ',', default_values_t = vec![2, 4, 8])]
        k: Vec<usize>,
        /// Tokens generated per run.
        #[arg(long, default_value_t = 48)]
        tokens: usize,
        /// Activations and KV cache in f32 (default: f16 where the adapter has it).
        #[arg(long)]
        f32: bool,
    },
}

/// Bytes of a GGUF file, or a random-weight model of the preset `shape`.
fn model_bytes(path: Option<&std::path::Path>, shape: &str) -> Result<Vec<u8>> {
    match path {
        Some(p) => std::fs::read(p).map_err(|e| pupil::PupilError::Format(format!("{}: {e}", p.display()))),
        None => pupil::model::synth::synthesize(&pupil::model::synth::preset(shape)?, 1, &mut |_, _| {}),
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_speculative(
    ctx: &GpuContext,
    target_path: Option<std::path::PathBuf>,
    shape: &str,
    draft_path: Option<std::path::PathBuf>,
    keep: &str,
    ks: &[usize],
    tokens: usize,
    f32_path: bool,
) -> Result<()> {
    use pupil::engine::{generate_speculative, Flow, Session, SpeculativeOptions};
    use pupil::model::{gguf::parse_header, prune, LlamaModel, ModelOptions};
    let target_file = model_bytes(target_path.as_deref(), shape)?;
    let draft_file = match &draft_path {
        Some(p) => model_bytes(Some(p), shape)?,
        None => {
            let kept = prune::parse_layer_list(keep)?;
            pollster::block_on(prune::keep_layers(&parse_header(&target_file)?, &target_file[..], &kept))?
        }
    };
    let dt = if f32_path || !ctx.caps.f16 { DType::F32 } else { DType::F16 };
    let context = (64 + tokens + ks.iter().max().copied().unwrap_or(1) + 2).next_multiple_of(64);
    let opts = ModelOptions { dtype: Some(dt), context: Some(context), ..ModelOptions::default() };
    let target = LlamaModel::load(ctx, &target_file, &opts, &mut |_, _| {})?;
    let draft = LlamaModel::load(ctx, &draft_file, &opts, &mut |_, _| {})?;
    drop((target_file, draft_file));
    let describe = |m: &LlamaModel| {
        format!(
            "{} layers, {:.1}M parameters, {:.1} MiB",
            m.config.n_layers,
            m.config.parameter_count() as f64 / 1e6,
            m.weight_bytes as f64 / (1 << 20) as f64
        )
    };
    let source = draft_path.map_or(format!("the target keeping layers {keep}"), |p| p.display().to_string());
    println!(
        "target {}: {}; draft ({source}): {}; {} path",
        target_path.map_or(shape.to_string(), |p| p.display().to_string()),
        describe(&target),
        describe(&draft),
        dt.name()
    );
    let vocab = target.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..32u32).map(|i| (i * 7919 + 13) % vocab).collect();
    // The target alone is k = 0: its own greedy decoding (one pass per token), through the same
    // loop with nothing drafted, so the comparison is of the passes alone.
    let run = |k: usize| -> Result<(Vec<u32>, pupil::engine::SpeculativeStats)> {
        let (mut t, mut d) = (Session::new(ctx, &target)?, Session::new(ctx, &draft)?);
        let mut out = Vec::new();
        let o = SpeculativeOptions {
            draft_tokens: k.max(1),
            max_tokens: tokens,
            stop_tokens: vec![],
            sampling: pupil::sampling::SamplerConfig::greedy(),
        };
        let stats = if k == 0 {
            let mut sampler = pupil::sampling::Sampler::new(pupil::sampling::SamplerConfig::greedy())?;
            let g = pupil::engine::GenerateOptions { max_tokens: tokens, stop_tokens: vec![] };
            let t0 = Instant::now();
            let s = pollster::block_on(pupil::engine::generate(ctx, &mut t, &prompt, &g, &mut sampler, &mut |id| {
                out.push(id);
                Flow::Continue
            }))?;
            let elapsed = t0.elapsed().as_secs_f64();
            pupil::engine::SpeculativeStats {
                target_passes: s.generated_tokens.saturating_sub(1),
                drafted_tokens: 0,
                accepted_tokens: 0,
                acceptance_rate: 0.0,
                tokens_per_target_pass: 1.0,
                elapsed_s: elapsed,
                generation: s,
            }
        } else {
            pollster::block_on(generate_speculative(ctx, &mut t, &mut d, &prompt, &o, &mut |id| {
                out.push(id);
                Flow::Continue
            }))?
        };
        Ok((out, stats))
    };
    run(0)?; // warm-up: pipelines compiled, buffers touched
    let (want, alone) = run(0)?;
    println!("greedy, {tokens} tokens after a {}-token prompt; decode = tokens/s after the first", prompt.len());
    println!(
        "{:>8} {:>11} {:>11} {:>12} {:>11} {:>9} {:>10}",
        "k", "decode t/s", "acceptance", "tokens/pass", "passes", "speed-up", "identical"
    );
    println!(
        "{:>8} {:>11.2} {:>11} {:>12.2} {:>11} {:>9.2} {:>10}",
        "alone", alone.generation.decode_tokens_per_s, "-", 1.0, alone.target_passes, 1.0, "-"
    );
    for &k in ks {
        let (got, s) = run(k)?;
        println!(
            "{:>8} {:>11.2} {:>11.3} {:>12.2} {:>11} {:>9.2} {:>10}",
            k,
            s.generation.decode_tokens_per_s,
            s.acceptance_rate,
            s.tokens_per_target_pass,
            s.target_passes,
            s.generation.decode_tokens_per_s / alone.generation.decode_tokens_per_s.max(1e-12),
            if got == want { "yes" } else { "NO" }
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench_train(
    ctx: &GpuContext,
    c: &Ceilings,
    path: Option<std::path::PathBuf>,
    shape: &str,
    rank: usize,
    seq: usize,
    batch: usize,
    steps: usize,
) -> Result<()> {
    use pupil::model::{synth, LlamaModel, LoraConfig, LoraTarget, ModelOptions, Trainer};
    use pupil::ops::optim::AdamW;
    let file = match &path {
        Some(p) => std::fs::read(p).map_err(|e| pupil::PupilError::Format(format!("{}: {e}", p.display())))?,
        None => synth::synthesize(&synth::preset(shape)?, 1, &mut |_, _| {})?,
    };
    let name = path.as_ref().map_or(format!("synthetic {shape}"), |p| p.display().to_string());
    let opts =
        ModelOptions { dtype: Some(DType::F32), context: Some(seq.next_multiple_of(64)), ..ModelOptions::default() };
    let model = LlamaModel::load(ctx, &file, &opts, &mut |_, _| {})?;
    drop(file);
    let before = ctx.memory.current_bytes();
    let cfg = LoraConfig::new(rank, 2.0 * rank as f32, LoraTarget::ALL.to_vec());
    let mut trainer = Trainer::new(ctx, &model, cfg, seq * batch, 1)?;
    let trainer_bytes = ctx.memory.current_bytes() - before;
    let vocab = model.config.vocab_size as u64;
    let mut rng = SplitMix64::new(9);
    let ids: Vec<u32> = (0..seq * batch).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let targets: Vec<u32> = ids[1..].iter().copied().chain([pupil::ops::cross_entropy::IGNORE_TARGET]).collect();
    let docs = vec![seq; batch];
    let opt = AdamW { lr: 1e-4, ..AdamW::default() };
    let step = |t: &mut Trainer| -> Result<f64> {
        let loss = pollster::block_on(t.forward_backward(ctx, &ids, &targets, &docs))?;
        pollster::block_on(t.step(ctx, &opt, Some(1.0)))?;
        Ok(loss)
    };
    step(&mut trainer)?;
    let start = Instant::now();
    for _ in 0..steps {
        step(&mut trainer)?;
    }
    let secs = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    let tokens = (seq * batch) as f64;
    let params = model.config.parameter_count() as f64;
    let gflops = 8.0 * params * tokens / secs / 1e9;
    println!(
        "train {name}: LoRA rank {rank} on q,k,v,o,gate,up,down ({} trainable), batch {batch} x seq {seq}, f32: \
         {:.1} s/step, {:.1} tokens/s, ~{gflops:.1} GFLOP/s ({:.1}% of the FMA ceiling); trainer buffers {:.1} MiB, \
         GPU peak {:.1} MiB (weights {:.1})",
        trainer.lora.parameter_count(),
        secs,
        tokens / secs,
        100.0 * gflops / c.fma_gflops,
        trainer_bytes as f64 / (1 << 20) as f64,
        ctx.memory.peak_bytes() as f64 / (1 << 20) as f64,
        model.weight_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bench_model(
    ctx: &GpuContext,
    c: &Ceilings,
    path: Option<std::path::PathBuf>,
    synth_shape: Option<String>,
    f32_path: bool,
    prompts: &[usize],
    batches: &[usize],
    steps: usize,
    at: usize,
) -> Result<()> {
    use pupil::model::{synth, LlamaModel, Logits, ModelOptions};
    let file = match (&path, &synth_shape) {
        (_, Some(shape)) => synth::synthesize(&synth::preset(shape)?, 1, &mut |_, _| {})?,
        (Some(p), None) => std::fs::read(p).map_err(|e| pupil::PupilError::Format(format!("{}: {e}", p.display())))?,
        (None, None) => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            let p = std::path::PathBuf::from(home).join(".cache/pupil/SmolLM2-135M-Instruct.Q4_1.gguf");
            std::fs::read(&p).map_err(|e| {
                pupil::PupilError::Format(format!("{}: {e} (run `pupil fetch` or pass --model)", p.display()))
            })?
        }
    };
    let name = synth_shape.unwrap_or_else(|| path.map_or("smollm2-135m".into(), |p| p.display().to_string()));
    let dt = if f32_path || !ctx.caps.f16 { DType::F32 } else { DType::F16 };
    let max_batch = batches.iter().copied().max().unwrap_or(1).min(GEMV_MAX_M);
    let chunk = prompts.iter().copied().max().unwrap_or(128);
    let context = (chunk + 1).max(at + steps + 1).next_multiple_of(64);
    let opts = ModelOptions { dtype: Some(dt), context: Some(context), max_batch, chunk, ..ModelOptions::default() };
    let model = LlamaModel::load(ctx, &file, &opts, &mut |_, _| {})?;
    drop(file);
    let vocab = model.config.vocab_size as u32;
    println!(
        "model {name}: {} {} layers, hidden {}, {:.0}M parameters, weights {:.1} MiB on the GPU, {} path, context {context}",
        model.config.architecture,
        model.config.n_layers,
        model.config.hidden,
        model.config.parameter_count() as f64 / 1e6,
        model.weight_bytes as f64 / (1 << 20) as f64,
        dt.name()
    );
    let cache = model.new_cache(ctx, max_batch)?;
    let token = |i: usize| (i as u32 * 7919 + 13) % vocab;
    println!("prefill (one sequence, one chunk, logits of the last token)");
    println!("{:>8} {:>11} {:>11}", "tokens", "time (ms)", "tokens/s");
    for &t_len in prompts {
        let ids: Vec<u32> = (0..t_len).map(token).collect();
        let run = || -> Result<()> {
            model.forward(ctx, &cache, 0, 0, &ids, Logits::Last)?;
            pollster::block_on(ctx.sync())
        };
        run()?;
        let reps = 3;
        let start = Instant::now();
        for _ in 0..reps {
            run()?;
        }
        let t = start.elapsed().as_secs_f64() / reps as f64;
        println!("{:>8} {:>11.2} {:>11.1}", t_len, t * 1e3, t_len as f64 / t);
    }
    // Fill every sequence's cache up to `at`, then time `steps` decode steps per batch size;
    // each step waits for the GPU (as generation does when it reads the sampled token back).
    let ids: Vec<u32> = (0..at).map(token).collect();
    for seq in 0..max_batch {
        for (i, chunk) in ids.chunks(model.chunk).enumerate() {
            model.forward(ctx, &cache, seq, i * model.chunk, chunk, Logits::Last)?;
        }
    }
    pollster::block_on(ctx.sync())?;
    println!("decode from position {at}: one token per sequence per step, waiting for each step");
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>11} {:>10} {:>9} {:>9}",
        "batch", "step (ms)", "tokens/s", "p50 (ms)", "p99 (ms)", "dispatches", "submits", "GB/s", "of copy"
    );
    for &batch in batches.iter().filter(|&&b| b <= max_batch) {
        let mut lat = Vec::with_capacity(steps);
        let before = ctx.stats();
        for s in 0..steps {
            let step: Vec<(usize, usize, u32)> = (0..batch).map(|q| (q, at + s, token(s + q))).collect();
            let t0 = Instant::now();
            model.decode(ctx, &cache, &step)?;
            pollster::block_on(ctx.sync())?;
            lat.push(t0.elapsed().as_secs_f64());
        }
        let after = ctx.stats();
        let total: f64 = lat.iter().sum();
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] * 1e3;
        let step_s = total / steps as f64;
        // Each step reads every weight once (the batch shares them).
        let gbs = model.weight_bytes as f64 / step_s / 1e9;
        println!(
            "{:>6} {:>10.2} {:>10.1} {:>9.2} {:>9.2} {:>11.0} {:>10.1} {:>9.1} {:>8.1}%",
            batch,
            step_s * 1e3,
            batch as f64 / step_s,
            p(0.5),
            p(0.99),
            (after.dispatches - before.dispatches) as f64 / steps as f64,
            (after.submits - before.submits) as f64 / steps as f64,
            gbs,
            100.0 * gbs / (c.copy_gbs / 2.0)
        );
    }
    println!("peak GPU memory {:.1} MiB", ctx.memory.peak_bytes() as f64 / (1 << 20) as f64);
    Ok(())
}

/// (name, query heads, KV heads, head_dim).
const ATTENTION_SHAPES: &[(&str, usize, usize, usize)] = &[("smollm2", 9, 3, 64), ("gemma3", 4, 1, 256)];

fn bench_attention(ctx: &GpuContext, seconds: f64, contexts: &[usize], window: usize, prompts: &[usize]) -> Result<()> {
    let dt = if ctx.caps.f16 { DType::F16 } else { DType::F32 };
    let mut rng = SplitMix64::new(2);
    println!("attention, storage {}; decode = one query token per step (attention only, KV write excluded)", dt.name());
    println!("{:<8} {:<22} {:>8} {:>11}", "heads", "cache", "context", "time (us)");
    let max_ctx = contexts.iter().copied().max().unwrap_or(1);
    for &(name, nh, nkv, hd) in ATTENTION_SHAPES {
        let q = Tensor::from_f32(ctx, &rng.vec_nonzero(nh * hd, -1.0, 1.0), &[1, nh, hd], dt)?;
        let out = Tensor::empty(ctx, &[1, nh, hd], dt)?;
        let full = KvCache::new(ctx, KvCacheKind::Full, 1, 1, max_ctx, nkv, hd, dt)?;
        let rolling = KvCache::new(ctx, KvCacheKind::Rolling, 1, 1, window, nkv, hd, dt)?;
        for &len in contexts {
            let seqs = Tensor::from_u32(ctx, &[0, len as u32 - 1], &[1, 2])?;
            let cfg = AttentionConfig::new(nh, nkv, hd);
            let t = time_it(ctx, seconds, |b| attention_decode_forward(b, &cfg, &q, &seqs, &full, 0, &out))?;
            println!("{:<8} {:<22} {:>8} {:>11.1}", name, format!("full ({max_ctx} slots)"), len, t * 1e6);
            let mut wcfg = AttentionConfig::new(nh, nkv, hd);
            wcfg.window = Some(window);
            let t = time_it(ctx, seconds, |b| attention_decode_forward(b, &wcfg, &q, &seqs, &rolling, 0, &out))?;
            println!("{:<8} {:<22} {:>8} {:>11.1}", name, format!("rolling (window {window})"), len, t * 1e6);
        }
    }
    println!("prefill (causal, no cache): tokens/s and GFLOP/s counting 2·T²·heads·head_dim (QKᵀ and PV, causal half)");
    println!("{:<8} {:>8} {:>11} {:>11} {:>9}", "heads", "tokens", "time (us)", "tokens/s", "GFLOP/s");
    for &(name, nh, nkv, hd) in ATTENTION_SHAPES {
        for &t_len in prompts {
            let q = Tensor::from_f32(ctx, &rng.vec_nonzero(t_len * nh * hd, -1.0, 1.0), &[t_len, nh, hd], dt)?;
            let k = Tensor::from_f32(ctx, &rng.vec_nonzero(t_len * nkv * hd, -1.0, 1.0), &[t_len, nkv, hd], dt)?;
            let v = Tensor::from_f32(ctx, &rng.vec_nonzero(t_len * nkv * hd, -1.0, 1.0), &[t_len, nkv, hd], dt)?;
            let out = Tensor::empty(ctx, &[t_len, nh, hd], dt)?;
            let lse = Tensor::empty(ctx, &[t_len, nh], DType::F32)?;
            let cfg = AttentionConfig::new(nh, nkv, hd);
            let t = time_it(ctx, seconds, |b| attention_prefill_forward(b, &cfg, &q, &k, &v, None, 0, &out, &lse))?;
            let flops = 2.0 * (t_len * t_len * nh * hd) as f64;
            println!("{:<8} {:>8} {:>11.1} {:>11.0} {:>9.2}", name, t_len, t * 1e6, t_len as f64 / t, flops / t / 1e9);
        }
    }
    Ok(())
}

/// (name, N = weight rows / outputs, K = columns / inputs).
const SHAPES: &[(&str, usize, usize)] = &[
    ("smollm2-up", 1536, 576),
    ("smollm2-down", 576, 1536),
    ("smollm2-head", 49152, 576),
    ("qwen2-1.5b-up", 8960, 1536),
    ("qwen2-1.5b-down", 1536, 8960),
    ("qwen2-1.5b-head", 151936, 1536),
    ("4096x4096", 4096, 4096),
    ("4096x14336", 14336, 4096),
];

/// Run `record` (which adds one dispatch to a batch) `reps` times per submit until about
/// `seconds` have passed; return seconds per dispatch.
fn time_it(ctx: &GpuContext, seconds: f64, mut record: impl FnMut(&mut Batch) -> Result<()>) -> Result<f64> {
    let run = |reps: usize, record: &mut dyn FnMut(&mut Batch) -> Result<()>| -> Result<f64> {
        let mut b = Batch::new(ctx);
        for _ in 0..reps {
            record(&mut b)?;
        }
        let t = Instant::now();
        b.submit();
        pollster::block_on(ctx.sync())?;
        Ok(t.elapsed().as_secs_f64())
    };
    run(1, &mut record)?; // warm-up: pipeline compile, first touch
    let one = run(1, &mut record)?;
    let reps = ((seconds / one.max(1e-6)) as usize).clamp(1, 2000);
    Ok(run(reps, &mut record)? / reps as f64)
}

/// Datasheet memory bandwidth (GB/s) and dense f32 (non-tensor-core) peak (GFLOP/s) of GPUs the
/// project benchmarks on, matched by adapter-name substring.
const DATASHEETS: &[(&str, f64, f64)] = &[
    ("H200", 4800.0, 67_000.0),
    ("H100 PCIe", 2000.0, 51_000.0),
    ("H100", 3350.0, 67_000.0),
    ("A100", 2039.0, 19_500.0),
    ("RTX 4090", 1008.0, 82_600.0),
];

fn datasheet(adapter: &str) -> String {
    match DATASHEETS.iter().find(|d| adapter.contains(d.0)) {
        Some(&(name, bw, flops)) => format!("datasheet ({name}): {bw:.0} GB/s, {flops:.0} GFLOP/s f32"),
        None => "datasheet: none on file for this adapter".to_string(),
    }
}

struct Ceilings {
    copy_gbs: f64,
    fma_gflops: f64,
}

fn ceilings(ctx: &GpuContext, seconds: f64) -> Result<Ceilings> {
    // 64 MiB each way (capped by the binding limit): larger than any cache.
    let words = ((64u64 << 20).min(ctx.caps.max_storage_binding) / 4) as usize / 4 * 4;
    let x = Tensor::from_u32(ctx, &vec![1u32; words], &[words])?;
    let y = Tensor::empty(ctx, &[words], DType::U32)?;
    let t = time_it(ctx, seconds, |b| copy_forward(b, &x, &y))?;
    let copy_gbs = 2.0 * (words * 4) as f64 / t / 1e9;
    let lanes = 1usize << 20;
    let iters = 256;
    let out = Tensor::empty(ctx, &[lanes * 4], DType::U32)?;
    let t = time_it(ctx, seconds, |b| fma_forward(b, &out, iters))?;
    let fma_gflops = 2.0 * 16.0 * iters as f64 * lanes as f64 / t / 1e9;
    Ok(Ceilings { copy_gbs, fma_gflops })
}

#[allow(clippy::too_many_arguments)]
fn report(format: &str, shape: &str, n: usize, k: usize, m: usize, t: f64, bytes_read: f64, c: &Ceilings) {
    let gbs = bytes_read / t / 1e9;
    let gflops = 2.0 * (m * n * k) as f64 / t / 1e9;
    println!(
        "{:<6} {:<16} {:>7} {:>6} {:>4} {:>11.1} {:>9.1} {:>9.1} {:>6.1}% {:>6.1}%",
        format,
        shape,
        n,
        k,
        m,
        t * 1e6,
        gbs,
        gflops,
        100.0 * gbs / c.copy_gbs,
        100.0 * gflops / c.fma_gflops
    );
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut options = ContextOptions::from_env();
    options.allow_f16 &= !cli.no_f16;
    options.allow_subgroups &= !cli.no_subgroups;
    match run(cli, options) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, options: ContextOptions) -> Result<()> {
    let ctx = pollster::block_on(GpuContext::new(options))?;
    print!("{}", ctx.describe());
    let c = ceilings(&ctx, cli.seconds)?;
    println!(
        "ceiling: copy {:.1} GB/s (read+write), FMA {:.1} GFLOP/s (f32), measured in this run",
        c.copy_gbs, c.fma_gflops
    );
    println!("{}", datasheet(&ctx.adapter_info.name));
    let (formats, shapes, m) = match cli.command {
        Command::Ceilings => return Ok(()),
        Command::Attention { contexts, window, prompts } => {
            return bench_attention(&ctx, cli.seconds, &contexts, window, &prompts)
        }
        Command::Model { model, synth, f32, prompts, batch, steps, at } => {
            return bench_model(&ctx, &c, model, synth, f32, &prompts, &batch, steps, at)
        }
        Command::Train { model, synth, rank, seq, batch, steps } => {
            return bench_train(&ctx, &c, model, &synth, rank, seq, batch, steps)
        }
        Command::Speculative { target, synth, draft, keep, k, tokens, f32 } => {
            return bench_speculative(&ctx, target, &synth, draft, &keep, &k, tokens, f32)
        }
        Command::Matmul { formats, shapes, m } => (formats, shapes, m),
    };
    let formats: Vec<QuantType> = if formats.is_empty() {
        QuantType::ALL.to_vec()
    } else {
        formats
            .iter()
            .map(|f| {
                QuantType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(f)).ok_or_else(|| {
                    pupil::PupilError::InvalidArgument { op: "pupil-bench", detail: format!("unknown format {f}") }
                })
            })
            .collect::<Result<_>>()?
    };
    let act = if ctx.caps.f16 { DType::F16 } else { DType::F32 };
    println!("activations {}; GEMV counts bytes read (weights as stored on the GPU + activations); GEMM counts 2·M·N·K flops", act.name());
    println!(
        "{:<6} {:<16} {:>7} {:>6} {:>4} {:>11} {:>9} {:>9} {:>7} {:>7}",
        "format", "shape", "N", "K", "M", "time (us)", "GB/s", "GFLOP/s", "%copy", "%fma"
    );
    let mut rng = SplitMix64::new(1);
    for &(name, n, k) in SHAPES.iter().filter(|s| shapes.is_empty() || shapes.iter().any(|x| x == s.0)) {
        for &ty in &formats {
            if k % ty.block_size().max(32) != 0 {
                println!("{:<6} {:<16} {:>7} {:>6}    - (K not a multiple of the block)", ty.name(), name, n, k);
                continue;
            }
            let bytes = random_blocks(ty, n * k, &mut rng);
            let w = QuantWeight::upload(&ctx, ty, n, k, &bytes)?;
            drop(bytes);
            for &mm in &m {
                let x = Tensor::from_f32(&ctx, &rng.vec_nonzero(mm * k, -1.0, 1.0), &[mm, k], act)?;
                let y = Tensor::empty(&ctx, &[mm, n], act)?;
                let t = time_it(&ctx, cli.seconds, |b| matmul_forward(b, &x, &w, None, &y, false))?;
                let act_bytes = (mm * k) as f64 * act.size_bytes() as f64;
                report(ty.name(), name, n, k, mm, t, w.gpu_bytes() as f64 + act_bytes, &c);
                if mm <= GEMV_MAX_M && ty.block_size() > 1 {
                    // The int8-activation path, its activation quantization included.
                    let xq = QuantizedActivations::new(&ctx, mm, k)?;
                    let t = time_it(&ctx, cli.seconds, |b| {
                        quantize_activations_forward(b, &x, &xq)?;
                        matmul_int8_forward(b, &xq, &w, None, &y, false)
                    })?;
                    report(&format!("{}i8", ty.name()), name, n, k, mm, t, w.gpu_bytes() as f64 + act_bytes, &c);
                }
            }
        }
    }
    Ok(())
}
