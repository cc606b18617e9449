// webmoe (npm package, WebGPU) and wllama (llama.cpp in wasm, CPU, 2 threads) on the same
// GGUF model in the same headless Chromium, in one run. Prints one JSON object.
//   node bench/browser.mjs GGUF PACKED_MANIFEST_DIR [reps]
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../scripts/serve.mjs';
import { launch, forwardLogs } from '../tests/browser/chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const [gguf, packed, repsArg] = process.argv.slice(2);
if (!gguf || !packed) {
  console.error('usage: node bench/browser.mjs MODEL.gguf PACKED_DIR [reps]');
  process.exit(2);
}
const reps = Number(repsArg ?? 3);
const srv = await serve(ROOT, {
  mounts: {
    '/bench-gguf/': path.dirname(path.resolve(gguf)),
    '/bench-packed/': path.resolve(packed),
    '/wllama/': path.join(ROOT, 'bench/node_modules/@wllama/wllama/esm'),
  },
});
const browser = await launch();
try {
  const page = await browser.newPage();
  forwardLogs(page, 'bench');
  await page.goto(`${srv.url}/tests/browser/blank.html`);
  const result = await page.evaluate(async ({ file, reps }) => {
    const median = (v) => { const s = [...v].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
    // A ~128-token prompt, different per repetition so no prompt cache helps.
    const text = (r) => `Story ${r}: ` + 'The quick brown fox jumps over the lazy dog while the cat watches from the window. '.repeat(7);
    const { Wllama } = await import('/wllama/index.js');
    const w = new Wllama({ default: '/wllama/wasm/wllama.wasm' });
    await w.loadModelFromUrl(`/bench-gguf/${file}`, { n_threads: 2, n_ctx: 1024 });
    const wl = { prefill: [], decode: [], prompt_tokens: 0, gen_tokens: 0 };
    for (let r = 0; r < reps; r++) {
      const out = await w.createCompletion({ prompt: text(r), max_tokens: 64, temperature: 0 });
      const t = out.timings;
      wl.prefill.push(t.prompt_per_second);
      wl.decode.push(t.predicted_per_second);
      wl.prompt_tokens = t.prompt_n;
      wl.gen_tokens = t.predicted_n;
    }
    await w.exit();
    const { createEngine } = await import('/pkg/webmoe.js');
    const e = await createEngine();
    await e.load('/bench-packed/manifest.json');
    const ours = await e.bench({ promptTokens: wl.prompt_tokens || 128, genTokens: 64, reps });
    return {
      adapter: e.adapter,
      wllama: { prefill_tokens_per_s: median(wl.prefill), decode_tokens_per_s: median(wl.decode), prompt_tokens: wl.prompt_tokens, gen_tokens: wl.gen_tokens, threads: 2 },
      webmoe: { prefill_tokens_per_s: ours.prefill_tokens_per_s.median, decode_tokens_per_s: ours.decode_tokens_per_s.median, prompt_tokens: ours.prompt_tokens, gen_tokens: ours.gen_tokens, time_to_first_token_s: ours.time_to_first_token_s.median },
    };
  }, { file: path.basename(gguf), reps });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  await srv.close();
}
