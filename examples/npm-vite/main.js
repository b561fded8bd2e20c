// A streaming chat on pupil-llm. ?model=<url of a .gguf> loads a real model (default: the
// synthetic tiny model, random weights, so its answers are gibberish but need no download).
import { createEngine } from 'pupil-llm';

const $ = (id) => document.getElementById(id);
const url = new URLSearchParams(location.search).get('model');
const history = [{ role: 'system', content: 'You are a helpful assistant. Be brief.' }];
let controller = null;

const engine = await createEngine({
  model: url || { synth: 'tiny-llama' },
  onProgress: ({ phase, done, total }) => {
    $('status').textContent = `${phase}: ${total ? Math.round((100 * done) / total) : '?'}%`;
  },
}).catch((e) => { $('status').textContent = `${e.name}: ${e.message}`; throw e; });
$('status').textContent = `${engine.model.name || engine.model.arch}, ${engine.model.dtype}, on ${engine.adapter.adapter || 'your GPU'}`;
$('input').disabled = false;

function line(cls, text) {
  const p = document.createElement('p');
  p.className = cls;
  p.textContent = text;
  $('log').append(p);
  return p;
}

$('form').onsubmit = async (event) => {
  event.preventDefault();
  const text = $('input').value.trim();
  if (!text || controller) return;
  $('input').value = '';
  line('user', text);
  history.push({ role: 'user', content: text });
  const out = line('assistant', '');
  controller = new AbortController();
  $('stop').disabled = false;
  try {
    const stream = await engine.chat.completions.create({ messages: history, stream: true, max_tokens: 200, signal: controller.signal });
    for await (const chunk of stream) {
      out.textContent += chunk.choices[0].delta.content ?? '';
      if (chunk.usage) $('status').textContent = `${chunk.usage.completion_tokens} tokens (${chunk.choices[0].finish_reason})`;
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
    $('status').textContent = 'stopped';
  } finally {
    history.push({ role: 'assistant', content: out.textContent });
    controller = null;
    $('stop').disabled = true;
  }
};
$('stop').onclick = () => controller?.abort();
