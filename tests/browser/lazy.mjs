// Experts on demand in the browser: the synthetic Mixtral-shaped model (95 MiB, 8 layers
// of 8 experts top-2, Q4_0), packed with an expert per file, loaded with
// `load(url, {experts: 'lazy'})` in headless Chromium over WebGPU:
//  - the load fetches the skeleton only; the first generated token comes before all
//    expert bytes are fetched (bytes at first token against the total are printed);
//  - the answer (greedy ids) equals the fully loaded model's, and so do the logits after
//    the background fill;
//  - the fill (started after the first answer) stores every expert, progress counting
//    experts stored; a reload after it makes no shard request at all;
//  - the wasm memory's high-water mark stays far below the model's size (the whole
//    model's load is measured beside it, in a page of its own);
//  - the learned-routing model in a worker engine: a chat completion's text equals the
//    whole model's, its first token comes before all expert bytes, and with fill: 'off'
//    experts come only on demand until fillExperts().
// scripts/test.sh packs the model first (scripts/synthetic.sh makes it).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../../scripts/serve.mjs';
import { launch, forwardLogs } from './chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DIR = 'target/packed/synthetic-moe';
const LEARNED = 'target/packed/learned-moe-experts';
const URL_ = `/${DIR}/manifest.json`;
const TOL = 1e-5;
for (const d of [DIR, LEARNED, 'target/packed/fixtures/learned-moe']) {
  if (!fs.existsSync(path.join(ROOT, d, 'manifest.json'))) {
    console.error(`${d} is missing: scripts/test.sh packs the fixtures, learned-moe with --expert-files and scripts/synthetic.sh's model first`);
    process.exit(1);
  }
}
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, DIR, 'manifest.json'), 'utf8'));
const expertFiles = manifest.shards.filter((s) => s.expert);
const expertBytes = expertFiles.reduce((n, s) => n + s.bytes, 0);

const srv = await serve(ROOT);
const browser = await launch();
const shardRequests = () => [...srv.counts.entries()].filter(([k]) => k.startsWith(`/${DIR}/`) && k.endsWith('.bin')).reduce((n, [, c]) => n + c, 0);
const expertRequests = () => [...srv.counts.entries()].filter(([k]) => k.startsWith(`/${DIR}/expert-`)).reduce((n, [, c]) => n + c, 0);
const PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366];
const GEN = 8;
const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

async function inPage(fn, arg) {
  const ctx = browser.contexts()[0] ?? (await browser.newContext());
  const page = await ctx.newPage();
  forwardLogs(page);
  await page.goto(`${srv.url}/tests/browser/blank.html`);
  try {
    return await page.evaluate(fn, arg);
  } finally {
    await page.close();
  }
}

try {
  // The whole model, in a page of its own: the reference answer and logits, and the heap
  // an eager load needs.
  const whole = await inPage(async ({ url, prompt, gen }) => {
    const { createEngine, deleteModel } = await import('/pkg/webmoe.js');
    await deleteModel(url);
    const engine = await createEngine({ context: 64 });
    const before = engine.wasmMemoryBytes;
    await engine.load(url);
    const ids = Array.from(await engine.generate(prompt, { maxTokens: gen }));
    const logits = Array.from(await engine.logits(prompt));
    const after = engine.wasmMemoryBytes;
    await engine.unload();
    return { ids, logits, before, after };
  }, { url: URL_, prompt: PROMPT, gen: GEN });

  // Two of eight experts per layer on the GPU, loaded whole into storage: the others are
  // read back from storage when the router asks, never all held in the heap.
  const paged = await inPage(async ({ url, prompt, gen }) => {
    const { createEngine, deleteModel } = await import('/pkg/webmoe.js');
    const engine = await createEngine({ context: 64 });
    const before = engine.wasmMemoryBytes;
    await engine.load(url, { residentExperts: 2 });
    const ids = Array.from(await engine.generate(prompt, { maxTokens: gen }));
    const after = engine.wasmMemoryBytes;
    await engine.unload();
    await deleteModel(url);
    return { ids, before, after };
  }, { url: URL_, prompt: PROMPT, gen: GEN });

  // Lazily, from empty storage.
  srv.counts.clear();
  const lazy = await inPage(async ({ url, prompt, gen }) => {
    const { createEngine } = await import('/pkg/webmoe.js');
    const engine = await createEngine({ context: 64 });
    const before = engine.wasmMemoryBytes;
    const progress = [];
    await engine.load(url, { experts: 'lazy', onProgress: (p) => progress.push({ ...p }) });
    const afterLoad = { memory: engine.wasmMemoryBytes, experts: engine.experts };
    let atFirst = null;
    const ids = Array.from(await engine.generate(prompt, { maxTokens: gen, onToken: () => { atFirst ??= engine.experts; } }));
    const afterAnswer = engine.experts;
    // The fill started after the answer; wait for it (experts stored and on the GPU).
    const filled = await engine.fillExperts();
    const logits = Array.from(await engine.logits(prompt));
    const info = await engine.info();
    return {
      ids, logits, before, afterLoad, atFirst, afterAnswer, filled, memory: engine.wasmMemoryBytes,
      info: { experts: info.experts, wasm: info.wasm_memory_bytes },
      expertProgress: progress.filter((p) => p.phase === 'experts'),
    };
  }, { url: URL_, prompt: PROMPT, gen: GEN });
  const lazyShards = shardRequests();
  const lazyExpertRequests = expertRequests();

  // A reload after the fill: everything comes from storage.
  srv.counts.clear();
  const reload = await inPage(async ({ url, prompt, gen }) => {
    const { createEngine } = await import('/pkg/webmoe.js');
    const engine = await createEngine({ context: 64 });
    await engine.load(url, { experts: 'lazy' });
    const status = engine.experts;
    const ids = Array.from(await engine.generate(prompt, { maxTokens: gen }));
    return { ids, status };
  }, { url: URL_, prompt: PROMPT, gen: GEN });
  const reloadShards = shardRequests();

  // The learned-routing model (its routing keeps to few experts), packed with an expert
  // per file, in a worker engine: a chat completion's first token, and its text against
  // the whole model's; the worker's fill.
  const learned = await inPage(async ({ lazyUrl, wholeUrl }) => {
    const { createEngine, createWorkerEngine, deleteModel } = await import('/pkg/webmoe.js');
    const req = { prompt: 'John looked at the sea and said', max_tokens: 24, temperature: 0 };
    await deleteModel(wholeUrl);
    await deleteModel(lazyUrl);
    const e = await createEngine();
    await e.load(wholeUrl);
    const want = (await e.chat.completions.create(req)).choices[0].message.content;
    await e.unload();
    const w = await createWorkerEngine(new Worker('/tests/browser/worker.js', { type: 'module' }));
    await w.load(lazyUrl, { experts: 'lazy', fill: 'off' });
    const before = await w.experts();
    const got = (await w.chat.completions.create(req)).choices[0].message.content;
    const atFirst = w.lastStats.experts.atFirstToken;
    const afterAnswer = await w.experts();
    const filled = await w.fillExperts();
    w.terminate();
    return { want, got, before, atFirst, afterAnswer, filled };
  }, { lazyUrl: `/${LEARNED}/manifest.json`, wholeUrl: '/target/packed/fixtures/learned-moe/manifest.json' });

  const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;
  const maxDiff = lazy.logits.reduce((m, x, i) => Math.max(m, Math.abs(x - whole.logits[i]) || (Number.isNaN(x) ? Infinity : 0)), 0);
  console.log(`model ${mb(manifest.total_bytes)}: ${expertFiles.length} expert files (${mb(expertBytes)}), skeleton ${mb(manifest.total_bytes - expertBytes)}`);
  console.log(`at the first token: ${lazy.atFirst?.stored} of ${expertFiles.length} experts stored, ${lazy.atFirst?.fetchedBytes} of ${expertBytes} expert bytes fetched (${(100 * lazy.atFirst?.fetchedBytes / expertBytes).toFixed(1)}%)`);
  console.log(`after the answer (${GEN} tokens): ${lazy.afterAnswer.stored} experts stored, ${lazy.afterAnswer.onDemand} fetched on demand`);
  console.log(`wasm memory, 2 of 8 experts resident, paged from storage: ${mb(paged.before)} -> ${mb(paged.after)}`);
  console.log(`wasm memory: lazy ${mb(lazy.before)} at start, ${mb(lazy.afterLoad.memory)} after the load, ${mb(lazy.memory)} after the answer and the fill; whole model ${mb(whole.before)} -> ${mb(whole.after)}`);
  console.log(`ids whole ${whole.ids.join(',')} lazy ${lazy.ids.join(',')} reload ${reload.ids.join(',')}; logits max|Δ| ${maxDiff.toExponential(2)}`);
  console.log(`shard requests: lazy load + answer + fill ${lazyShards} (${lazyExpertRequests} expert files), reload ${reloadShards}`);

  console.log(`learned-moe in a worker: first token after ${learned.atFirst.fetchedBytes} of ${learned.atFirst.totalBytes} expert bytes (${learned.atFirst.stored} of ${learned.atFirst.total} experts); ${learned.afterAnswer.stored} stored after the answer; text ${JSON.stringify(learned.got)}`);
  check(learned.before.stored === 0 && learned.got === learned.want, 'learned-moe: the lazy worker engine\'s answer equals the whole model\'s');
  check(learned.atFirst.fetchedBytes < learned.atFirst.totalBytes, 'learned-moe: the first token comes before all expert bytes are fetched');
  check(learned.afterAnswer.onDemand === learned.afterAnswer.stored && learned.filled.complete && learned.filled.stored === learned.filled.total, 'learned-moe: with fill off, experts come only on demand until the fill is asked for, which completes');
  check(lazy.afterLoad.experts.stored === 0 && lazy.afterLoad.experts.total === expertFiles.length, 'the lazy load stores no expert');
  check(lazy.atFirst && lazy.atFirst.fetchedBytes > 0 && lazy.atFirst.fetchedBytes < expertBytes && lazy.atFirst.stored < expertFiles.length, 'the first token comes before all expert bytes are fetched');
  check(JSON.stringify(lazy.ids) === JSON.stringify(whole.ids), 'the lazy answer equals the whole model\'s');
  check(maxDiff <= TOL, `logits after the fill equal the whole model's (max|Δ| ${maxDiff})`);
  check(lazy.filled?.complete && lazy.filled.stored === expertFiles.length, 'the fill stores every expert');
  const last = lazy.expertProgress.at(-1);
  check(last?.loaded === expertFiles.length && last.total === expertFiles.length && last.complete === true, 'progress counts experts stored up to the total, and says complete');
  check(lazy.info.experts?.complete === true && lazy.info.wasm > 0, 'info() reports the experts and the wasm memory');
  check(lazyExpertRequests === expertFiles.length, 'each expert file was fetched once');
  check(reloadShards === 0 && reload.status.complete, 'a reload after the fill makes no shard request');
  check(JSON.stringify(reload.ids) === JSON.stringify(whole.ids), 'the reloaded answer equals the whole model\'s');
  // Shards of 32 MiB (webmoe pack's default) go to the GPU one at a time: the heap holds
  // about one shard and its copy, never the model.
  const grown = lazy.memory - lazy.before;
  check(grown < manifest.total_bytes / 2, `the lazy heap grew by ${mb(grown)}, under half the model's ${mb(manifest.total_bytes)}`);
  check(JSON.stringify(paged.ids) === JSON.stringify(whole.ids), 'with 2 of 8 experts resident, paged from storage, the answer equals the whole model\'s');
  const grownPaged = paged.after - paged.before;
  check(grownPaged < expertBytes / 2, `paging experts from storage grew the heap by ${mb(grownPaged)}, under half the experts' ${mb(expertBytes)}`);
  const grownWhole = whole.after - whole.before;
  check(grownWhole < manifest.total_bytes, `loading the whole model grew the heap by ${mb(grownWhole)}, under the model's ${mb(manifest.total_bytes)}`);
} finally {
  await browser.close();
  await srv.close();
}
if (failures.length) {
  console.error(`lazy experts: ${failures.length} check(s) failed`);
  process.exit(1);
}
console.log('lazy experts: all checks passed');
