// The demo page: load a model directory, run greedy generation or inspect logits.
// Everything the page shows is set through textContent, never as HTML.
import { createEngine } from '../pkg/webmoe.js';

const $ = (id) => document.getElementById(id);
let engine = null;

function status(el, text, bad = false) {
  el.textContent = text;
  el.classList.toggle('bad', bad);
}

function parseTokens() {
  const ids = $('tokens').value.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  if (ids.length === 0 || ids.some((t) => !Number.isInteger(t) || t < 0)) throw new Error('token ids must be non-negative integers, comma separated');
  return ids;
}

function setBusy(busy) {
  for (const id of ['load', 'generate', 'logits']) $(id).disabled = busy || (id !== 'load' && !engine?.vocabSize);
}

async function start() {
  if (!navigator.gpu) {
    status($('gpu-status'), 'This browser has no WebGPU. Try a recent Chrome or Edge, or Firefox/Safari with WebGPU enabled.', true);
    return;
  }
  try {
    engine = await createEngine();
    status($('gpu-status'), `WebGPU adapter: ${engine.adapter}`);
    setBusy(false);
  } catch (e) {
    status($('gpu-status'), `Could not start the engine: ${e.message}`, true);
  }
}

$('load').addEventListener('click', async () => {
  const url = $('model-url').value.trim();
  const bar = $('progress');
  const files = new Map();
  bar.hidden = false;
  bar.value = 0;
  setBusy(true);
  const t0 = performance.now();
  try {
    await engine.load(url, {
      onProgress: (p) => {
        files.set(p.file, p);
        const done = [...files.values()].reduce((s, f) => s + f.loaded, 0);
        const total = [...files.values()].reduce((s, f) => s + Math.max(f.total, f.loaded), 0);
        bar.value = total ? done / total : 0;
        status($('load-status'), `Downloading ${p.file}: ${(done / 1e6).toFixed(2)} / ${(total / 1e6).toFixed(2)} MB`);
      },
    });
    bar.value = 1;
    status($('load-status'), `Loaded ${url} in ${((performance.now() - t0) / 1000).toFixed(2)} s (vocabulary ${engine.vocabSize})`);
  } catch (e) {
    status($('load-status'), e.message, true);
  } finally {
    setBusy(false);
  }
});

$('generate').addEventListener('click', async () => {
  setBusy(true);
  const out = $('output');
  try {
    const prompt = parseTokens();
    const maxTokens = Number($('max-tokens').value) || 16;
    out.textContent = `${prompt.join(' ')} →`;
    const t0 = performance.now();
    let first = 0;
    const ids = await engine.generate(prompt, {
      maxTokens,
      onToken: (id) => {
        if (!first) first = performance.now();
        out.textContent += ` ${id}`;
      },
    });
    const t1 = performance.now();
    const rate = ids.length > 1 ? ((ids.length - 1) / ((t1 - first) / 1000)).toFixed(1) : '–';
    status($('stats'), `${ids.length} tokens; first after ${(first - t0).toFixed(0)} ms; decode ${rate} tokens/s`);
  } catch (e) {
    status($('stats'), e.message, true);
  } finally {
    setBusy(false);
  }
});

$('logits').addEventListener('click', async () => {
  setBusy(true);
  try {
    const prompt = parseTokens();
    const logits = await engine.logits(prompt);
    const v = engine.vocabSize;
    const lines = prompt.map((tok, t) => {
      const row = Array.from(logits.subarray(t * v, (t + 1) * v), (x, i) => [x, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
      return `pos ${t} (token ${tok}): ` + row.map(([x, i]) => `${i}:${x.toFixed(3)}`).join('  ');
    });
    $('output').textContent = lines.join('\n');
    status($('stats'), `top-5 next-token logits at each of ${prompt.length} positions`);
  } catch (e) {
    status($('stats'), e.message, true);
  } finally {
    setBusy(false);
  }
});

start();
