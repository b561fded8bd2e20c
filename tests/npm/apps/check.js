// The in-browser checks every test app runs (tests/npm/run.mjs copies this file into each app):
// the package's API from a bundled (or plain ESM) import. Results go to window.__npmResult for
// the driver: { checks: [{ ok, what, detail }], error }.
import { createEngine, listCachedModels } from 'pupil-llm';

const checks = [];
const check = (ok, what, detail = '') => { checks.push({ ok: !!ok, what, detail: String(detail) }); };
const log = (text) => { document.body.insertAdjacentText('beforeend', text + '\n'); };

async function run() {
  const t0 = performance.now();
  const phases = new Set();
  const engine = await createEngine({
    model: { synth: 'tiny-llama', seed: 3 },
    loadOptions: { dtype: 'f32', context: 256 },
    onProgress: (p) => phases.add(p.phase),
  });
  check(engine.model.layers > 0 && engine.model.dtype === 'f32', 'createEngine loads the synthetic model in a worker',
    `${engine.model.arch}, ${engine.model.layers} layers, ${Math.round(performance.now() - t0)} ms, phases ${[...phases]}`);
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }];

  // Streamed: role delta first, content deltas, a finish_reason chunk with usage last.
  const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, temperature: 0 });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  const first = chunks[0], last = chunks[chunks.length - 1];
  const middle = chunks.slice(1, -1);
  check(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === first.id && c.choices.length === 1),
    'every chunk is a chat.completion.chunk of one id', `${chunks.length} chunks`);
  check(first.choices[0].delta.role === 'assistant' && first.choices[0].finish_reason === null, 'the first delta has the role');
  check(middle.length > 0 && middle.every((c) => typeof c.choices[0].delta.content === 'string' && !c.choices[0].delta.role
    && c.choices[0].finish_reason === null), 'content deltas follow', `${middle.length} content chunks`);
  check(['stop', 'length'].includes(last.choices[0].finish_reason) && last.usage
    && last.usage.completion_tokens > 0 && last.usage.prompt_tokens > 0
    && last.usage.total_tokens === last.usage.prompt_tokens + last.usage.completion_tokens,
  'the last chunk has finish_reason and usage', JSON.stringify({ finish: last.choices[0].finish_reason, usage: last.usage }));
  const streamed = middle.map((c) => c.choices[0].delta.content).join('');

  // Not streamed, same greedy request: the same text, with usage.
  const done = await engine.chat.completions.create({ messages, max_tokens: 6, temperature: 0 });
  const choice = done.choices[0];
  check(done.object === 'chat.completion' && /^chatcmpl-/.test(done.id) && typeof done.created === 'number'
    && typeof done.model === 'string' && choice.index === 0 && choice.message.role === 'assistant',
  'a non-streamed completion has OpenAI\'s shape');
  check(choice.message.content === streamed, 'its greedy text equals the streamed one', JSON.stringify(choice.message.content));
  check(done.usage.completion_tokens === 6 && choice.finish_reason === 'length'
    || done.usage.completion_tokens <= 6 && choice.finish_reason === 'stop', 'usage and finish_reason agree',
  JSON.stringify(done.usage));

  // logprobs: every token's, OpenAI's shape; greedy picks the first of the top alternatives.
  const lpDone = await engine.chat.completions.create({ messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
  const lps = lpDone.choices[0].logprobs?.content ?? [];
  check(lps.length === lpDone.usage.completion_tokens && lps.every((t) => typeof t.token === 'string'
    && t.logprob <= 0 && Array.isArray(t.bytes) && t.top_logprobs.length === 3
    && t.top_logprobs[0].token === t.token && Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6
    && t.top_logprobs[1].logprob <= t.top_logprobs[0].logprob)
    && lpDone.choices[0].message.content === choice.message.content,
  'logprobs with top_logprobs: one per token, greedy takes the likeliest, the text unchanged', JSON.stringify(lps[0]));
  const lpChunks = [];
  for await (const c of await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 })) {
    lpChunks.push(...(c.choices[0].logprobs?.content ?? []));
  }
  check(JSON.stringify(lpChunks) === JSON.stringify(lps), 'streamed chunks carry the same logprobs', `${lpChunks.length} tokens`);
  let noLogprobs = null;
  try { await engine.chat.completions.create({ messages, max_tokens: 2, top_logprobs: 2 }); } catch (e) { noLogprobs = e; }
  check(noLogprobs?.name === 'TypeError', 'top_logprobs without logprobs is a TypeError', noLogprobs?.message);
  check(done.choices[0].logprobs === null, 'without logprobs a choice has logprobs: null');

  // n = 2: two choices, sequentially, different seeds.
  const two = await engine.chat.completions.create({ messages, max_tokens: 4, n: 2, seed: 7 });
  check(two.choices.length === 2 && two.choices[1].index === 1, 'n: 2 gives two choices');

  // An abort while generating rejects with AbortError; the engine then works.
  const ac = new AbortController();
  let aborted = null;
  try {
    const s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 64, signal: ac.signal });
    for await (const c of s) if (c.choices[0].delta.content) ac.abort();
  } catch (e) { aborted = e; }
  check(aborted?.name === 'AbortError', 'AbortSignal aborts a stream with AbortError', aborted?.name);
  const raw = await engine.generate('Once upon a time', { max_tokens: 3, temperature: 0 });
  check(raw.generatedTokens > 0 && typeof raw.text === 'string', 'generate() works after the abort', JSON.stringify(raw.text));
  // A prompt that leaves a <think> open: everything generated is the thought, none the answer.
  const thinking = await engine.generate('Question: 2+2?\n<think>\n', { max_tokens: 8, temperature: 0, split_reasoning: true });
  check(thinking.content === '' && thinking.reasoning === thinking.text.replace(/^\n+/, '').replace(/\n+$/, ''),
    'split_reasoning puts an open thought in reasoning, not content', JSON.stringify(thinking.reasoning));

  check(Array.isArray(await listCachedModels()), 'listCachedModels() answers');
  // Training through the package: a few LoRA steps, a step callback each, held-out loss down.
  const steps = [];
  const report = await engine.finetune('The quick brown fox jumps over the lazy dog. '.repeat(12),
    { rank: 2, alpha: 4, steps: 3, seqLen: 48, batchRows: 2, lr: 0.01, warmup: 1, evalFraction: 0.25, onStep: (s) => steps.push(s.step) });
  check(report.steps.length === 3 && steps.join() === '1,2,3' && report.evalLossAfter < report.evalLossBefore,
    'finetune() trains: a step callback each, held-out loss down', JSON.stringify({ steps, before: report.evalLossBefore, after: report.evalLossAfter }));
  // The trained adapters as a safetensors file: an 8-byte header length, the JSON header, data.
  const w = await engine.trainedWeights();
  const hlen = w ? Number(new DataView(w.buffer, w.byteOffset, 8).getBigUint64(0, true)) : 0;
  const header = w ? JSON.parse(new TextDecoder().decode(w.subarray(8, 8 + hlen))) : {};
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const end = Math.max(0, ...names.map((k) => header[k].data_offsets[1]));
  check(w instanceof Uint8Array && header.__metadata__?.rank === '2' && names.length > 0
    && names.every((k) => /\.lora_[AB]$/.test(k)) && w.length === 8 + hlen + end,
  'trainedWeights(): the adapters as safetensors', `${w?.length} bytes, ${names.length} tensors`);
  // Distillation through the package: a second model as the teacher, then a pruned student of
  // the loaded model healed by distillation from it (with hidden-state alignment).
  const teacher = await engine.loadTeacher({ synth: 'tiny-llama', seed: 4 }, { loadOptions: { dtype: 'f32', context: 256 } });
  const kdSteps = [];
  const kd = await engine.distill('The quick brown fox jumps over the lazy dog. '.repeat(12),
    { rank: 2, alpha: 4, steps: 3, seqLen: 48, batchRows: 2, lr: 0.01, warmup: 1, evalFraction: 0.25, tau: 2,
      kdAlpha: 0.5, kdAlphaAdapt: true, onStep: (s) => kdSteps.push(s.kl) });
  const kdAlphas = kd.steps.map((s) => s.alpha);
  check(teacher.layers === engine.model.layers && kdSteps.length === 3 && kdSteps.every((k) => k > 0)
    && kd.evalKlAfter < kd.evalKlBefore && kd.teacherEvalLoss > 0 && kd.steps.every((s) => s.ce > 0)
    && kdAlphas[0] === 0.5 && kdAlphas[1] === 0.5 && kdAlphas[2] !== 0.5,
  'distill() from loadTeacher(): a KL and CE per step, α adapted to the loss, held-out KL down',
  JSON.stringify({ kdSteps, kdAlphas, before: kd.evalKlBefore, after: kd.evalKlAfter }));
  // Speculative decoding: with a teacher loaded, it answers and the loaded model drafts.
  const spec = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 6,
    temperature: 0, speculative: { draft_tokens: 3 } });
  check(spec.speculative?.target_passes > 0 && spec.speculative.drafted_tokens >= spec.speculative.accepted_tokens
    && spec.usage.completion_tokens > 0 && typeof spec.choices[0].message.content === 'string',
  'chat.completions with speculative: the teacher answers, the loaded model drafts', JSON.stringify(spec.speculative));
  let specLogprobs = null;
  try {
    await engine.chat.completions.create({ messages, max_tokens: 2, speculative: {}, logprobs: true });
  } catch (e) { specLogprobs = e; }
  check(/speculative/.test(specLogprobs?.message ?? ''), 'logprobs with speculative is refused with a clear error', specLogprobs?.message);
  const layers = engine.model.layers;
  const pruned = await engine.pruneIntoStudent({ keep: [1] });
  check(pruned.model.layers === 1 && engine.model.layers === 1 && pruned.teacher.layers === layers
    && JSON.stringify(pruned.dropped) === '[0]', 'pruneIntoStudent(): the model loses a layer, the original teaches',
  JSON.stringify({ kept: pruned.kept, dropped: pruned.dropped }));
  const healed = await engine.distill('The quick brown fox jumps over the lazy dog. '.repeat(12),
    { rank: 2, alpha: 4, steps: 1, seqLen: 48, batchRows: 2, lr: 0.01, warmup: 1, evalFraction: 0.25, tau: 1, alignHidden: 0.1, apply: true });
  check(healed.steps.length === 1 && healed.steps[0].kl > 0 && healed.evalKlBefore > 0 && healed.merged?.tensors > 0,
    'distill() heals the pruned student (logits + hidden-state alignment), apply merges it in', JSON.stringify({ kl: healed.steps[0].kl, merged: healed.merged }));
  await engine.unloadTeacher();
  // dispose() while generating: the running request ends early with finish_reason 'abort',
  // a queued one is refused.
  const before = await engine.memory();
  const running = engine.chat.completions.create({ messages, max_tokens: 200, temperature: 0 });
  const queued = engine.generate('never', { max_tokens: 2 }).then(() => null, (e) => e);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const after = await engine.dispose();
  const cut = await running;
  check(cut.choices[0].finish_reason === 'abort' && cut.usage.completion_tokens < 200,
    'dispose() stops the running generation (finish_reason abort)', `${cut.usage.completion_tokens} tokens`);
  check((await queued)?.name === 'Disposed', 'dispose() refuses the queued request', (await queued)?.name);
  check(before.allocatedBytes > 0 && after.allocatedBytes === 0 && after.liveBuffers === 0,
    'dispose() unloads: tracked GPU memory back to zero', `${before.allocatedBytes} -> ${after.allocatedBytes} bytes`);
  let refused = null;
  try { await engine.memory(); } catch (e) { refused = e; }
  check(refused?.name === 'Disposed', 'a disposed engine refuses calls', refused?.name);
}

run().then(
  () => { window.__npmResult = { checks }; },
  (e) => { window.__npmResult = { checks, error: `${e.name}: ${e.message}` }; },
).finally(() => log(JSON.stringify(window.__npmResult, null, 1)));
