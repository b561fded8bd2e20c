//! `pupil-bench`: kernel benchmarks. Prints, from one run on one device, the ceilings
//! (vec4 copy bandwidth, f32 FMA peak) and then quantized GEMV/GEMM figures for every
//! format × shape × M with their ratio to those ceilings.
//!
//!   pupil-bench matmul [--formats Q4_0,Q4_K] [--shapes smollm2-up,...] [--m 1,4,16,128,512]
//!   pupil-bench attention [--contexts 128,1024,8192] [--window 512]
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
