// Types of pupil-llm's API (index.js). Hand-written; tests/npm/types-check.ts proves them with
// tsc, including `@ts-expect-error` lines for misuse.

/** A model file by URL, a Blob/File, its bytes, or a synthetic random-weight model (tests). */
export type ModelInput = string | Blob | ArrayBuffer | Uint8Array | { synth: 'tiny-llama' | 'smollm2-135m' | 'qwen2-1.5b'; seed?: number };

export interface LoadProgress {
  /** 'download' (bytes fetched), then 'header' and 'weights' (bytes uploaded to the GPU). */
  phase: 'download' | 'header' | 'weights' | (string & {});
  done: number;
  /** 0 when unknown (a download without content-length). */
  total: number;
}

export interface LoadOptions {
  /** KV-cache length in tokens (default: the model's, at most 4096). */
  context?: number;
  /** Weight/activation precision; 'f16' needs the adapter's shader-f16 (the default when present). */
  dtype?: 'f32' | 'f16';
  /** Past the context: 'error' (default) or 'streaming' (a window plus sink tokens). */
  overflow?: 'error' | 'streaming';
  sinkTokens?: number;
  /** Refuse to load a model whose GPU plan exceeds this many bytes. */
  memoryBudget?: number;
}

export interface EngineOptions {
  allowF16?: boolean;
  allowSubgroups?: boolean;
  maxStorageBinding?: number;
  maxBufferSize?: number;
}

export interface CreateEngineOptions {
  model: ModelInput;
  onProgress?: (progress: LoadProgress) => void;
  loadOptions?: LoadOptions;
  engineOptions?: EngineOptions;
  /** Your own worker running this package's worker.js (default: one is started for you). */
  worker?: Worker;
}

export interface ModelInfo {
  arch: string;
  name: string;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  context: number;
  dtype: 'f32' | 'f16';
  weightBytes: number;
  kvBytes: number;
  scratchBytes: number;
  hasChatTemplate: boolean;
  bosToken: string | null;
  eosToken: string | null;
  stopIds: number[];
}

export interface LoadStats {
  fromCache: boolean;
  bytesFetched: number;
  fileBytes: number;
  downloadMs: number;
  loadMs: number;
  /** Why a downloaded model was not cached, when it was not. */
  note?: string;
}

export interface MemoryInfo {
  /** GPU bytes Pupil holds now (0 after dispose's unload). */
  allocatedBytes: number;
  peakBytes: number;
  liveBuffers: number;
  /** The wasm linear memory's size (it only grows). */
  wasmHeapBytes: number;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** Sampling options shared by chat completions and generate (OpenAI's names). */
export interface SamplingOptions {
  /** Default 0.7; 0 is greedy. */
  temperature?: number;
  top_p?: number;
  /** Pupil extras (not in OpenAI's API). */
  top_k?: number;
  min_p?: number;
  repetition_penalty?: number;
  /** Default 256. */
  max_tokens?: number;
  stop?: string | string[];
  /** Without one a random seed is drawn; choice i of n uses seed + i. */
  seed?: number;
  /** Separate a `<think>` thought from the answer (`reasoning_content`); default: when the
   *  model's vocabulary has `</think>` (R1-Distill, Qwen3). */
  split_reasoning?: boolean;
  /** Speculative decoding: the teacher (`loadTeacher()`, or a pruned student's original)
   *  answers, the loaded model drafting `draft_tokens` (default 4) per verification pass. The
   *  output follows the teacher alone: greedy, its tokens; sampling, its distribution. */
  speculative?: { draft_tokens?: number };
  /** Report each generated token's log-probability under the model: the log-softmax of its raw
   *  logits, before the repetition penalty, temperature and truncation (OpenAI's and vLLM's
   *  meaning), so it does not depend on how the token was sampled. Not with `speculative`. */
  logprobs?: boolean;
  /** With `logprobs`: also the 0..20 most likely tokens at each position. */
  top_logprobs?: number;
  /** Aborting rejects the request (or the stream's next step) with a DOMException 'AbortError'. */
  signal?: AbortSignal;
}

export interface ChatCompletionCreateParams extends SamplingOptions {
  messages: ChatMessage[];
  /** Choices to generate, one after another with seeds seed, seed+1, ... Default 1. */
  n?: number;
  stream?: boolean;
  /**
   * The chat template's `enable_thinking` variable, as transformers' `apply_chat_template`
   * kwarg: `false` makes Qwen3 answer without thinking. Left out, the template's default.
   */
  enable_thinking?: boolean;
}

/** 'abort': only when dispose() cut the generation short (an AbortSignal rejects instead). */
export type FinishReason = 'stop' | 'length' | 'abort';

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** A speculative request's figures (summed over its choices; a Pupil extra). */
export interface SpeculativeUsage {
  drafted_tokens: number;
  accepted_tokens: number;
  acceptance_rate: number;
  target_passes: number;
}

/** One token's log-probability (OpenAI's shape): `bytes` is its exact UTF-8, `token` that read
 *  as text (a piece of a character shows as U+FFFD). */
export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

export interface ChatCompletionTokenLogprob extends TokenLogprob {
  /** The `top_logprobs` most likely tokens at this position, most likely first. */
  top_logprobs: TokenLogprob[];
}

/** With `logprobs: true`: every generated token's (a chunk: those since the previous chunk). */
export interface ChoiceLogprobs {
  content: ChatCompletionTokenLogprob[];
  refusal: null;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    /** `reasoning_content`: a reasoning model's `<think>` thought, apart from the answer. */
    message: { role: 'assistant'; content: string; reasoning_content?: string };
    logprobs: ChoiceLogprobs | null;
    finish_reason: FinishReason;
  }>;
  usage: CompletionUsage;
  /** With `speculative`: how the draft fared. */
  speculative?: SpeculativeUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    /** The first chunk of a choice has the role; later ones content (or, for a reasoning
     *  model's `<think>` thought, reasoning_content); the last one is empty. */
    delta: { role?: 'assistant'; content?: string; reasoning_content?: string };
    logprobs: ChoiceLogprobs | null;
    finish_reason: FinishReason | null;
  }>;
  /** Only on the last chunk of the response. */
  usage?: CompletionUsage;
  /** With `speculative`, on the last chunk. */
  speculative?: SpeculativeUsage;
}

export interface Completions {
  create(params: ChatCompletionCreateParams & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(params: ChatCompletionCreateParams & { stream?: false }): Promise<ChatCompletion>;
  create(params: ChatCompletionCreateParams): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
}

/** What the engine reports for one generation. */
export interface GenerationResult {
  finishReason: 'stop' | 'length' | 'abort' | 'context';
  /** The raw generated text. */
  text: string;
  /** The answer: `text` without a reasoning model's `<think>` thought. */
  content: string;
  /** The thought ('' for other models). */
  reasoning: string;
  tokens: number[];
  tokenIds: number[];
  prompt: string;
  promptTokens: number;
  reusedTokens: number;
  generatedTokens: number;
  timeToFirstTokenMs: number;
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  latencyP50Ms: number;
  latencyP99Ms: number;
  peakGpuBytes: number;
  dispatchesPerToken: number;
  submitsPerToken: number;
  /** With `speculative`: the draft's guesses, those kept, the teacher's passes. */
  speculative?: {
    draftedTokens: number;
    acceptedTokens: number;
    acceptanceRate: number;
    targetPasses: number;
    tokensPerTargetPass: number;
  };
  /** With `logprobs`: each generated token's, aligned with `tokens`. */
  logprobs?: ChatCompletionTokenLogprob[];
}

export type GenerateEvent =
  | { type: 'token'; text: string; tokenId: number; reasoning: string; logprobs?: ChatCompletionTokenLogprob }
  | { type: 'done'; result: GenerationResult };

export interface GenerateOptions extends SamplingOptions {
  stream?: boolean;
  /** Called with each text delta (non-streaming calls); `logprobs` with `logprobs: true`. */
  onToken?: (text: string, tokenId: number, reasoning: string, logprobs?: ChatCompletionTokenLogprob) => void;
}

export interface AdapterInfo {
  /** The adapter's name ('' where the browser hides it). */
  adapter: string;
  backend: string;
  /** shader-f16 is available (the f16 path is used unless dtype 'f32' is asked for). */
  f16: boolean;
  subgroups: boolean;
  subgroupMinSize: number;
  subgroupMaxSize: number;
  limits: {
    maxBufferSize: number;
    maxStorageBinding: number;
    maxWorkgroupStorage: number;
    maxInvocationsPerWorkgroup: number;
    maxStorageBuffersPerStage: number;
  };
  /** One line describing the adapter and the paths in use. */
  describe: string;
}

export interface FinetuneOptions {
  /** LoRA rank (default 16; 0: no adapters). */
  rank?: number;
  alpha?: number;
  /** LoRA dropout on each adapter's input while training, 0 to <1 (default 0). */
  dropout?: number;
  /** Also train the last N layers in full (default 0). */
  lastLayers?: number;
  /** Add a trainable output gate to every layer's attention (default false). */
  gates?: boolean;
  /** Projections to adapt: 'q' 'k' 'v' 'o' 'gate' 'up' 'down' (default all). */
  targets?: string[];
  steps?: number;
  seqLen?: number;
  batchRows?: number;
  /** Passes accumulated into each optimizer step (default 1). */
  gradAccum?: number;
  lr?: number;
  warmup?: number;
  minLrRatio?: number;
  weightDecay?: number;
  /** 0 turns global-norm clipping off (default 1). */
  maxGradNorm?: number;
  evalFraction?: number;
  seed?: number;
  format?: 'text' | 'jsonl';
  /** Merge what was trained into the loaded model afterwards (generation then uses it). */
  apply?: boolean;
}

export interface FinetuneStep {
  step: number;
  steps: number;
  loss: number;
  gradNorm: number;
  lr: number;
  tokens: number;
  /** False when the step was skipped for NaN/Inf gradients. */
  applied: boolean;
  /** Distillation runs: the step's mean KL to the teacher (null otherwise). */
  kl: number | null;
  /** Distillation runs: the step's hard-label cross-entropy (its loss less the divergence
   * and alignment terms, without α; null otherwise or when α is 0). */
  ce: number | null;
  /** Distillation runs: the CE weight α the step trained with (scheduled or adapted). */
  alpha: number | null;
  /** Distillation runs: the temperature τ the step trained with (scheduled or adapted). */
  tau: number | null;
}

export interface FinetuneReport {
  trainRows: number;
  evalRows: number;
  evalLossBefore: number | null;
  evalLossAfter: number | null;
  /** Distillation runs: the held-out KL to the teacher before and after (null otherwise). */
  evalKlBefore: number | null;
  evalKlAfter: number | null;
  /** With `apply`: the merge into the loaded model (tensors changed, relative update and
   * requantisation error). */
  merged?: { tensors: number; update: number; requantisation: number };
  /** Distillation runs with a teacher model: its own held-out loss (null otherwise). */
  teacherEvalLoss: number | null;
  skippedSteps: number;
  trainableParameters: number;
  steps: FinetuneStep[];
}

export interface DistillOptions extends FinetuneOptions {
  /** Temperature of both softmaxes (default 2; a teach file's own). */
  tau?: number;
  /** Weight of the hard-label cross-entropy (default 0.5). */
  kdAlpha?: number;
  /** 'forward' (default), 'reverse', 'jsd' or 'jsd:β'. */
  divergence?: string;
  /** Anneal τ / the CE weight linearly to these by the last step. */
  tauEnd?: number;
  kdAlphaEnd?: number;
  /** Adapt α to the loss instead of scheduling it: the labels' term keeps the share of the
   * loss it had at step 1 (over recent averages of the KL and CE; within 100× of kdAlpha). */
  kdAlphaAdapt?: boolean;
  /** Adapt τ to the loss instead of scheduling it: it moves from `tau` toward `tauEnd`
   * (default 1) as the KL's recent average falls below step 1's (the KL weight follows τ²). */
  kdTauAdapt?: boolean;
  /** Context distillation (no teacher model): the model reads this before each JSONL line as
   * the teacher, and learns to answer without it. */
  instruction?: string;
  /** Hidden-state alignment weight (default none). */
  alignHidden?: number;
  /** [studentBoundary, teacherBoundary] pairs (default: every boundary, or a pruned student's
   * kept layers). */
  alignPairs?: [number, number][];
  /** Align through a learned projection per pair (trained with the adapters, not exported;
   * default: on when the teacher's hidden size differs from the student's, where it is needed). */
  alignProject?: boolean;
}

export interface PruneOptions {
  /** The layers to keep (in order). */
  keep?: number[];
  /** Or: drop this many layers, the least influential on `data` (first and last stay). */
  drop?: number;
  data?: string;
  format?: 'text' | 'jsonl';
  /** At most this many calibration tokens (default 4096). */
  calibrationTokens?: number;
}

export interface PruneResult {
  kept: number[];
  dropped: number[];
  /** Per layer of the pruned model's source, 1 − cos(block input, output) (drop only). */
  influence: number[] | null;
  model: ModelInfo;
  teacher: ModelInfo;
}

export declare class Engine {
  private constructor();
  /** The adapter, backend and limits the engine opened. */
  readonly adapter: AdapterInfo;
  /** The loaded model. */
  readonly model: ModelInfo;
  readonly loadStats: LoadStats;
  readonly chat: { completions: Completions };
  /** Generate after a raw prompt (no chat template). */
  generate(prompt: string, options: GenerateOptions & { stream: true }): AsyncIterable<GenerateEvent>;
  generate(prompt: string, options?: GenerateOptions & { stream?: false }): Promise<GenerationResult>;
  /** Fine-tune LoRA adapters of the loaded model (f32 path) on text or JSONL data. */
  finetune(data: string, options?: FinetuneOptions & { onStep?: (step: FinetuneStep) => void; signal?: AbortSignal }): Promise<FinetuneReport>;
  /** Distil the teacher (loadTeacher / pruneIntoStudent, or the model itself reading
   * `instruction`) into LoRA adapters of the loaded model. */
  distill(data: string, options?: DistillOptions & { onStep?: (step: FinetuneStep) => void; signal?: AbortSignal }): Promise<FinetuneReport>;
  /** Load a second model as distill()'s teacher (f32, the same vocabulary). */
  loadTeacher(model: ModelInput, options?: { onProgress?: (progress: LoadProgress) => void; loadOptions?: LoadOptions }): Promise<ModelInfo>;
  unloadTeacher(): Promise<true>;
  /** The loaded model becomes the teacher, its copy without some layers the loaded model. */
  pruneIntoStudent(options: PruneOptions): Promise<PruneResult>;
  /** What the last finetune() or distill() trained, as safetensors bytes (null before any). */
  trainedWeights(): Promise<Uint8Array | null>;
  /** Replace the loaded model. */
  load(model: ModelInput, options?: { onProgress?: (progress: LoadProgress) => void; loadOptions?: LoadOptions }): Promise<ModelInfo>;
  /** Forget the cached conversation. */
  reset(): Promise<true>;
  memory(): Promise<MemoryInfo>;
  /** Stop the running generation (it resolves with finish_reason 'abort'), refuse queued and
   * later requests (errors named 'Disposed'), unload the model, terminate the worker; resolves
   * to the tracked memory after the unload (allocatedBytes 0). */
  dispose(): Promise<MemoryInfo>;
}

export declare function createEngine(options: CreateEngineOptions): Promise<Engine>;

export interface CachedModel {
  url: string;
  name: string;
  size: number;
}

/** Models kept in the browser's Cache API by earlier downloads. */
export declare function listCachedModels(): Promise<CachedModel[]>;
/** Delete one (its absolute URL, as listCachedModels gives it); false if it was not cached. */
export declare function deleteCachedModel(url: string): Promise<boolean>;
