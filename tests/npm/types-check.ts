// Compiled with `tsc --noEmit` against the packed package (tests/npm/run.mjs): correct use must
// type-check, and every `@ts-expect-error` line must really be an error — so the types are
// real, not `any` (an unused @ts-expect-error fails the compile).
import {
  createEngine, listCachedModels, deleteCachedModel,
  type ChatCompletion, type ChatCompletionChunk, type Engine, type MemoryInfo,
} from 'pupil-llm';

export async function use(file: File): Promise<void> {
  const engine: Engine = await createEngine({
    model: { synth: 'tiny-llama', seed: 1 },
    loadOptions: { dtype: 'f32', context: 512, overflow: 'streaming', sinkTokens: 4 },
    onProgress: ({ phase, done, total }) => console.log(phase, done / total),
  });
  await createEngine({ model: file });
  await createEngine({ model: new Uint8Array(8) });
  await createEngine({ model: 'https://example.com/m.gguf', engineOptions: { allowF16: false } });

  const done: ChatCompletion = await engine.chat.completions.create({
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }],
    temperature: 0.5, top_p: 0.9, max_tokens: 32, stop: ['\n'], seed: 1, n: 2,
    signal: new AbortController().signal,
  });
  const text: string = done.choices[0].message.content;
  const total: number = done.usage.total_tokens;
  const reason: 'stop' | 'length' | 'abort' = done.choices[0].finish_reason;

  const stream = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'Hi' }], stream: true, stop: 'x' });
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    const piece: string | undefined = c.choices[0].delta.content;
    if (c.usage) console.log(c.usage.completion_tokens, piece);
  }
  for await (const ev of engine.generate('Once', { stream: true, max_tokens: 4 })) {
    if (ev.type === 'token') console.log(ev.text, ev.tokenId);
    else console.log(ev.result.decodeTokensPerS);
  }
  const r = await engine.generate('Once', { onToken: (t, id) => console.log(t, id) });
  console.log(r.finishReason, text, total, reason, engine.model.layers);
  await engine.loadTeacher({ synth: 'tiny-llama', seed: 2 }, { onProgress: (p) => console.log(p.phase) });
  const sp = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], speculative: { draft_tokens: 4 } });
  console.log(sp.speculative?.acceptance_rate);
  const lp = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 2 });
  const first: number | undefined = lp.choices[0].logprobs?.content[0].top_logprobs[0].logprob;
  console.log(first, lp.choices[0].logprobs?.content[0].bytes.length);
  const kd = await engine.distill('text', { steps: 2, tau: 2, kdAlpha: 0.5, kdAlphaAdapt: true, divergence: 'jsd:0.3', onStep: (s) => console.log(s.kl, s.ce, s.alpha) });
  const pruned = await engine.pruneIntoStudent({ drop: 1, data: 'calibration text' });
  const applied = await engine.distill('{"text": "x"}\n', { format: 'jsonl', alignHidden: 0.1, alignPairs: [[1, 2]], apply: true });
  console.log(applied.merged?.requantisation);
  await engine.unloadTeacher();
  console.log(kd.evalKlAfter, kd.teacherEvalLoss, pruned.kept, pruned.teacher.layers);
  const m: MemoryInfo = await engine.dispose();
  console.log(m.allocatedBytes, (await listCachedModels())[0]?.size, await deleteCachedModel('u'));
}

export async function misuse(engine: Engine): Promise<void> {
  // @ts-expect-error a role the API does not know
  await engine.chat.completions.create({ messages: [{ role: 'robot', content: 'Hi' }] });
  // @ts-expect-error max_tokens is a number
  await engine.chat.completions.create({ messages: [], max_tokens: '32' });
  // @ts-expect-error messages are required
  await engine.chat.completions.create({ temperature: 0 });
  // @ts-expect-error content is a string
  await engine.chat.completions.create({ messages: [{ role: 'user', content: 42 }] });
  // @ts-expect-error logprobs is a boolean
  await engine.chat.completions.create({ messages: [], logprobs: 3 });
  // @ts-expect-error stop is a string or strings
  await engine.chat.completions.create({ messages: [], stop: 3 });
  // @ts-expect-error a non-streamed completion is not iterable
  for await (const c of await engine.chat.completions.create({ messages: [] })) console.log(c);
  const streamed = await engine.chat.completions.create({ messages: [], stream: true });
  // @ts-expect-error a stream has no choices of its own
  console.log(streamed.choices);
  // @ts-expect-error unknown synthetic preset
  await createEngine({ model: { synth: 'gpt-5' } });
  // @ts-expect-error model is required
  await createEngine({ loadOptions: { dtype: 'f32' } });
  // @ts-expect-error dtype is f32 or f16
  await createEngine({ model: 'm.gguf', loadOptions: { dtype: 'q4' } });
  // @ts-expect-error draft_tokens is a number
  await engine.chat.completions.create({ messages: [], speculative: { draft_tokens: 'four' } });
  // @ts-expect-error tau is a number
  await engine.distill('text', { tau: 'hot' });
  // @ts-expect-error alignment pairs are [student, teacher] pairs of numbers
  await engine.distill('text', { alignPairs: [1, 2] });
  // @ts-expect-error keep is a list of layers
  await engine.pruneIntoStudent({ keep: '0-3' });
  // @ts-expect-error the model info is typed
  const layers: string = engine.model.layers;
  // @ts-expect-error memory() resolves to MemoryInfo
  const free: string = (await engine.memory()).allocatedBytes;
  console.log(layers, free);
}
