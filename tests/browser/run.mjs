// Browser acceptance test: pkg/ (the npm package) in headless Chromium over WebGPU must
// give the same logits as transformers (tests/fixtures/*/reference.json) within 1e-3,
// through both the prefill and the decode kernels, and report load progress.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../../scripts/serve.mjs';
import { launch, forwardLogs } from './chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TOL = 1e-3;

// Each fixture as [name, URL to load, reference dir]: a Hugging Face directory or its
// model.gguf, and where scripts/test.sh packed it (target/packed/fixtures/NAME), its
// packed manifest too.
const FIX = path.join(ROOT, 'tests/fixtures');
const names = fs.readdirSync(FIX)
  .filter((d) => fs.existsSync(path.join(FIX, d, 'reference.json')))
  .filter((d) => ['config.json', 'model.gguf'].some((f) => fs.existsSync(path.join(FIX, d, f))))
  .sort();
const fixtures = names.flatMap((d) => {
  const own = [d, fs.existsSync(path.join(FIX, d, 'model.gguf')) ? `/tests/fixtures/${d}/model.gguf` : `/tests/fixtures/${d}/`, d];
  const packed = path.join(ROOT, 'target/packed/fixtures', d, 'manifest.json');
  return fs.existsSync(packed) ? [own, [`${d} (packed)`, `/target/packed/fixtures/${d}/manifest.json`, d]] : [own];
});
if (!fixtures.some(([n]) => n.endsWith('(packed)'))) {
  console.error('target/packed/fixtures/ is missing: scripts/test.sh packs the fixtures first');
  process.exit(1);
}
if (!fs.existsSync(path.join(ROOT, 'pkg/wasm/webmoe_bg.wasm'))) {
  console.error('pkg/wasm/ is missing: run scripts/build-wasm.sh first');
  process.exit(1);
}

const srv = await serve(ROOT);
const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage();
  forwardLogs(page);
  await page.goto(`${srv.url}/tests/browser/blank.html`);
  const results = await page.evaluate(async (fixtures) => {
    const { createEngine } = await import('/pkg/webmoe.js');
    const out = [];
    // Prefill kernels; decode kernels in the adapter's shape (8 lanes on SwiftShader); decode
    // kernels in GPUs' 32-lane shape with workgroup-memory sums (what a browser on a GPU runs).
    for (const [prefillChunk, gemvLanes] of [[256, undefined], [1, undefined], [1, 32]]) {
      const engine = await createEngine({ prefillChunk, gemvLanes });
      for (const [name, url, refDir] of fixtures) {
        const ref = await (await fetch(`/tests/fixtures/${refDir}/reference.json`)).json();
        // Real vocabularies keep their logits as f32 rows in a file beside the reference.
        if (ref.logits_file) {
          const flat = new Float32Array(await (await fetch(`/tests/fixtures/${refDir}/${ref.logits_file}`)).arrayBuffer());
          const v = flat.length / ref.tokens.length;
          ref.logits = Array.from({ length: ref.tokens.length }, (_, t) => flat.subarray(t * v, (t + 1) * v));
        }
        const progress = [];
        await engine.load(url, { onProgress: (p) => progress.push(p) });
        const logits = await engine.logits(ref.tokens);
        const vocab = engine.vocabSize;
        let maxDiff = 0;
        for (let t = 0; t < ref.tokens.length; t++) {
          for (let i = 0; i < vocab; i++) {
            const d = Math.abs(logits[t * vocab + i] - ref.logits[t][i]);
            maxDiff = Math.max(maxDiff, Number.isNaN(d) ? Infinity : d);
          }
        }
        const done = progress.filter((p) => p.total > 0 && p.loaded === p.total).map((p) => p.file);
        out.push({
          name, prefillChunk, gemvLanes: gemvLanes ?? 'auto', maxDiff, adapter: engine.adapter,
          length: logits.length, expected: ref.tokens.length * ref.logits[0].length,
          progressEvents: progress.length, filesCompleted: [...new Set(done)],
        });
      }
    }
    // Errors cross the JS boundary as rejected promises, not panics.
    const engine = await createEngine();
    const errors = {};
    try { await engine.logits([1, 2]); } catch (e) { errors.beforeLoad = String(e.message ?? e); }
    try { await engine.load('/tests/fixtures/does-not-exist/'); } catch (e) { errors.missingModel = String(e.message ?? e); }
    await engine.load(fixtures.find(([n]) => n === 'mixtral-e4-top1-mha')[1]);
    try { await engine.logits([1, 999999]); } catch (e) { errors.badToken = String(e.message ?? e); }
    const still = await engine.logits([1, 2]);
    errors.usableAfter = still.length;
    // A completion on the learned-routing MoE reports its routing in lastStats.
    await engine.load(fixtures.find(([n]) => n === 'learned-moe')[1]);
    const done = await engine.chat.completions.create({ prompt: 'In the beginning was the Word', max_tokens: 8, temperature: 0 });
    const routing = { usage: done.usage, stats: engine.lastStats };

    // Expert residency: the learned-routing MoE with 2 of 8 experts per layer on the GPU
    // (LRU, with and without lookahead prefetch, and a pinned hot set), and the first MoE
    // fixture with top-k slots: logits of a prompt and 64 more tokens, through the grouped
    // GEMMs (chunk 256) and token by token through the decode kernels (chunk 1), equal to
    // the all-resident model's.
    const paged = [];
    const lm = fixtures.find(([n]) => n === 'learned-moe (packed)')[1];
    const ids = Array.from({ length: 12 + 64 }, (_, i) => 1 + ((i * 7919) % 4000));
    const moe = fixtures.find(([n]) => n === 'mixtral-e8-top2-swa5');
    const short = Array.from({ length: 48 }, (_, i) => 1 + ((i * 31) % 60));
    for (const prefillChunk of [256, 1]) {
      const e = await createEngine({ prefillChunk });
      const runs = [[lm, ids, {}], [lm, ids, { residentExperts: 2 }], [lm, ids, { residentExperts: 2, prefetch: true }],
        [lm, ids, { residentExperts: 4, expertPolicy: 'pinned:2' }], [moe[1], short, {}], [moe[1], short, { residentExperts: 2, prefetch: true }]];
      let want = null;
      for (const [url, toks, opts] of runs) {
        await e.load(url, opts);
        const l = await e.logits(toks);
        if (!opts.residentExperts) { want = l; continue; }
        let d = 0;
        for (let i = 0; i < l.length; i++) d = Math.max(d, Math.abs(l[i] - want[i]) || (l[i] === want[i] ? 0 : Infinity));
        // lastStats.paging after a completion (the learned model has a tokenizer).
        const s = url === lm ? await e.chat.completions.create({ prompt: 'In the beginning', max_tokens: 6, temperature: 0 }).then(() => e.lastStats.paging) : undefined;
        paged.push({ url, prefillChunk, opts, maxDiff: d, n: l.length, paging: s });
      }
    }
    return { out, errors, routing, paged };
  }, fixtures);

  console.log(`adapter: ${results.out[0]?.adapter}`);
  for (const r of results.out) {
    const ok = r.maxDiff <= TOL && r.length === r.expected && r.filesCompleted.length > 0;
    if (!ok) failed = true;
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${r.name.padEnd(36)} chunk ${String(r.prefillChunk).padStart(3)} lanes ${String(r.gemvLanes).padStart(4)}  max|Δ| ${r.maxDiff.toExponential(2)}  ` +
      `progress events ${r.progressEvents}, files ${r.filesCompleted.join(' ')}`);
  }
  const e = results.errors;
  const expect = (cond, what) => { if (!cond) { failed = true; console.log(`FAIL ${what}`); } else console.log(`ok   ${what}`); };
  expect(/no model loaded/.test(e.beforeLoad ?? ''), `logits before load rejects: ${e.beforeLoad}`);
  expect(/config\.json.*not found/.test(e.missingModel ?? ''), `missing model rejects: ${e.missingModel}`);
  expect(/token id 999999/.test(e.badToken ?? ''), `bad token rejects: ${e.badToken}`);
  expect(e.usableAfter > 0, 'engine usable after errors');
  // Every fed token (prompt, and each generated one but the last) routed in each MoE layer,
  // the trace's usage equal to the router's own counts on the GPU.
  const { usage, stats } = results.routing;
  const fed = usage.prompt_tokens + usage.completion_tokens - 1;
  const r = stats.routing ?? [];
  const consistent = r.length === 4 && r.every((l, i) => l.tokens === fed &&
    l.usage.reduce((a, b) => a + b, 0) === fed * l.k && l.usage.every((u, x) => u === stats.expertCounts[i][x]) &&
    l.lru.length === l.experts - l.k + 1 && l.same_first >= 0 && l.same_first <= 1);
  expect(consistent, `lastStats.routing: ${r.length} layers over ${fed} tokens, same first ` +
    r.map((l) => (100 * l.same_first).toFixed(0) + '%').join(' ') + ` (random ${(100 * (r[0]?.same_first_random ?? 0)).toFixed(1)}%)`);
  for (const p of results.paged) {
    const s = p.paging;
    expect(p.maxDiff <= 1e-5 && p.n > 0 && (s === undefined || (s && s.misses > 0 && s.tokens > 0)),
      `paged ${p.url.split('/').slice(-2, -1)} ${JSON.stringify(p.opts)} chunk ${p.prefillChunk}: max|Δ| ${p.maxDiff.toExponential(2)} over ${p.n} logits` +
      (s ? `; lastStats.paging: hit rate ${(100 * s.hitRate).toFixed(0)}%, ${s.mbPerToken.toFixed(3)} MB/token, host waits ${s.hostSyncMsPerToken.toFixed(1)} ms/token` : '') +
      (s?.prefetchRecall != null ? `, prefetch recall ${(100 * s.prefetchRecall).toFixed(0)}%` : ''));
  }
  if (results.paged.length !== 8) { failed = true; console.log('FAIL not every paged run ran'); }
  if (results.out.length !== fixtures.length * 3) { failed = true; console.log('FAIL not every fixture ran'); }
} finally {
  await browser.close();
  await srv.close();
}
process.exit(failed ? 1 : 0);
