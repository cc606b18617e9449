// The real Gemma 3 270M Q4_K_M (F32, Q5_0, Q4_K, Q8_0, Q6_K tensors; a 262k x 640 Q8_0
// embedding larger than one WebGPU storage binding on many adapters) packed for the web,
// through pkg/ in headless Chromium: prompt logits against transformers on the dequantized
// GGUF (tests/fixtures/gemma3-270m/reference.json: 20 largest and 256 fixed columns per
// position) within 1e-3, and the first prompt's 24 greedy tokens equal to transformers'.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../../scripts/serve.mjs';
import { launch, forwardLogs } from './chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PACKED = path.join(ROOT, 'target/packed');
const TOL = 1e-3;
if (!fs.existsSync(path.join(PACKED, 'gemma3/manifest.json'))) {
  const msg = 'target/packed/gemma3 is missing (scripts/test.sh packs it when fetch-models.sh has it)';
  // CI fetches and packs it, so there a missing model is a failure, not a skip.
  if (process.env.CI === 'true') { console.error(`FAIL (CI=true): ${msg}`); process.exit(1); }
  console.log(`SKIPPED: ${msg}`);
  process.exit(0);
}
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/fixtures/gemma3-270m/reference.json')));

const srv = await serve(ROOT, { mounts: { '/models/': PACKED } });
const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage();
  forwardLogs(page, 'gemma3');
  await page.goto(`${srv.url}/tests/browser/blank.html`);
  const r = await page.evaluate(async (ref) => {
    const { createEngine } = await import('/pkg/webmoe.js');
    const engine = await createEngine();
    await engine.load('/models/gemma3/manifest.json');
    const v = engine.vocabSize;
    let maxDiff = 0;
    let top1 = true;
    for (const c of ref.cases) {
      const logits = await engine.logits(c.ids);
      c.logits.forEach((row, t) => {
        const at = (i) => logits[t * v + i];
        const diff = (a, b) => { const d = Math.abs(a - b); return Number.isNaN(d) ? Infinity : d; };
        ref.columns.forEach((col, j) => { maxDiff = Math.max(maxDiff, diff(at(col), row.values[j])); });
        row.top_ids.forEach((id, j) => { maxDiff = Math.max(maxDiff, diff(at(id), row.top_values[j])); });
        let best = 0;
        for (let i = 1; i < v; i++) if (at(i) > at(best)) best = i;
        if (best !== row.top_ids[0]) top1 = false;
      });
    }
    const c = ref.cases[0];
    const greedy = Array.from(await engine.generate(c.ids, { maxTokens: c.greedy_ids.length }));
    return { maxDiff, top1, greedy, want: c.greedy_ids, adapter: engine.adapter, positions: ref.cases.reduce((n, c) => n + c.ids.length, 0) };
  }, ref);
  console.log(`adapter: ${r.adapter}`);
  const ok1 = r.maxDiff <= TOL && r.top1;
  console.log(`${ok1 ? 'ok  ' : 'FAIL'} Gemma 3 270M Q4_K_M (packed) prompt logits over ${r.positions} positions: max|Δ| ${r.maxDiff.toExponential(2)}, top-1 ${r.top1 ? 'equal' : 'DIFFERS'}`);
  const ok2 = JSON.stringify(r.greedy) === JSON.stringify(r.want);
  console.log(`${ok2 ? 'ok  ' : 'FAIL'} greedy continuation of ${JSON.stringify(ref.cases[0].prompt)}: ${r.greedy.length} tokens ${ok2 ? 'equal transformers\'' : `${JSON.stringify(r.greedy)} vs ${JSON.stringify(r.want)}`}`);
  failed = !(ok1 && ok2);
} finally {
  await browser.close();
  await srv.close();
}
process.exit(failed ? 1 : 0);
