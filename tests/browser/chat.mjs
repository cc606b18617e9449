// Browser acceptance for the chat page and the package's storage, API and worker engine,
// in headless Chromium over WebGPU:
//  1. the page loads the packed SmolLM2 and answers "What is the capital of France?" at
//     temperature 0 with exactly the text the native CLI gives (screenshot saved);
//  2. reloading the page loads the model with zero shard requests to the server;
//  3. a shard corrupted on the server: a clear error naming it, nothing stored for it;
//     once fixed, the load completes fetching only what is missing;
//  4. aborting a streamed reply stops it and the engine stays usable;
//  5. the worker engine and the in-page engine give identical logits.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { serve } from '../../scripts/serve.mjs';
import { launch, forwardLogs } from './chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PACKED = path.join(ROOT, 'target/packed');
const MODEL = '/models/smollm2/manifest.json';
const QUESTION = 'What is the capital of France?';
const ARTIFACTS = path.join(ROOT, 'target/browser-artifacts');
fs.mkdirSync(ARTIFACTS, { recursive: true });

if (!fs.existsSync(path.join(PACKED, 'smollm2/manifest.json'))) {
  console.error('target/packed/smollm2 is missing: scripts/test.sh packs it (webmoe pack)');
  process.exit(1);
}
const native = execFileSync(path.join(ROOT, 'target/release/webmoe'),
  ['generate', '--model', path.join(PACKED, 'smollm2/manifest.json'), '--chat', QUESTION, '--temperature', '0'],
  { env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' } }).toString().replace(/\n$/, '');
console.log(`native CLI: ${JSON.stringify(native)}`);

const srv = await serve(ROOT, { mounts: { '/models/': PACKED } });
const shardRequests = (name = 'smollm2/shard-') => [...srv.counts.entries()].filter(([k]) => k.includes(name)).reduce((n, [, c]) => n + c, 0);
const browser = await launch();
let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failed = true;
};

try {
  // --- 1 and 2: the chat page ---------------------------------------------------------
  const ctx = await browser.newContext({ viewport: { width: 1180, height: 760 } });
  const page = await ctx.newPage();
  forwardLogs(page, 'chat');
  await page.goto(`${srv.url}/web/?model=${encodeURIComponent(MODEL)}`);
  await page.waitForFunction(() => !document.getElementById('load').disabled, null, { timeout: 60000 });
  await page.fill('#temperature', '0');
  await page.click('#load');
  await page.waitForFunction(() => document.getElementById('model-name').dataset.loaded === '1' || document.getElementById('load-status').classList.contains('error'), null, { timeout: 300000 });
  check(await page.$eval('#model-name', (e) => e.dataset.loaded === '1'), `page loaded the packed model: ${await page.textContent('#load-status')}`);
  const firstLoad = shardRequests();
  await page.fill('#input', QUESTION);
  await page.click('#send');
  await page.waitForSelector('.msg.assistant[data-done="1"]', { timeout: 600000 });
  const reply = await page.textContent('.msg.assistant');
  check(reply === native, `page answer ${JSON.stringify(reply)} equals the native CLI's`);
  console.log(`     stats: ${await page.textContent('#stats')}`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'chat.png') });

  srv.counts.clear();
  await page.reload();
  await page.waitForFunction(() => !document.getElementById('load').disabled, null, { timeout: 60000 });
  await page.click('#load');
  await page.waitForFunction(() => document.getElementById('model-name').dataset.loaded === '1', null, { timeout: 300000 });
  check(firstLoad === 3 && shardRequests() === 0, `reload: ${shardRequests()} shard requests (first load made ${firstLoad})`);
  await ctx.close();

  // --- 3, 4, 5: the package API in a fresh context ---------------------------------------
  const ctx2 = await browser.newContext();
  const p2 = await ctx2.newPage();
  forwardLogs(p2, 'api');
  await p2.goto(`${srv.url}/tests/browser/blank.html`);
  const good = fs.readFileSync(path.join(PACKED, 'smollm2/shard-00001.bin'));
  const bad = Buffer.from(good);
  bad[12345] ^= 0xff;
  srv.overrides.set('/models/smollm2/shard-00001.bin', bad);
  srv.counts.clear();
  const corrupt = await p2.evaluate(async (url) => {
    const { createEngine, hasModel, listModels } = await import('/pkg/webmoe.js');
    window.engine = await createEngine();
    let error = null;
    try {
      await window.engine.load(url);
    } catch (e) {
      error = e.message;
    }
    return { error, has: await hasModel(url), stored: await listModels() };
  }, MODEL);
  check(/shard-00001\.bin/.test(corrupt.error ?? '') && /SHA-256/.test(corrupt.error ?? ''), `corrupt shard: ${corrupt.error}`);
  const stored = corrupt.stored.find((m) => m.url.endsWith(MODEL));
  const shard1 = good.length;
  check(!corrupt.has && stored && stored.bytes - stored.storedBytes === shard1, `nothing stored for the bad shard (${stored?.storedBytes} of ${stored?.bytes} bytes stored)`);
  srv.overrides.delete('/models/smollm2/shard-00001.bin');
  srv.counts.clear();
  const fixed = await p2.evaluate(async (url) => {
    await window.engine.load(url);
    const { hasModel } = await import('/pkg/webmoe.js');
    return { has: await hasModel(url), info: await window.engine.info() };
  }, MODEL);
  check(fixed.has && shardRequests('shard-00001') === 1 && shardRequests() === 1,
    `fixed server: load completed fetching ${shardRequests()} shard (only the missing one)`);

  const abort = await p2.evaluate(async () => {
    const e = window.engine;
    const ac = new AbortController();
    const s = await e.chat.completions.create({ messages: [{ role: 'user', content: 'Tell me a long story about dragons.' }], stream: true, max_tokens: 200, temperature: 0.8, seed: 1, signal: ac.signal });
    let chunks = 0;
    let error = null;
    try {
      for await (const c of s) {
        if (c.choices[0]?.delta?.content) chunks++;
        if (chunks === 2) ac.abort();
      }
    } catch (err) {
      error = err.name;
    }
    const after = await e.chat.completions.create({ messages: [{ role: 'user', content: 'What is the capital of France?' }], temperature: 0, max_tokens: 8 });
    return { chunks, error, after: after.choices[0].message.content, usage: after.usage };
  });
  check(abort.error === 'AbortError' && abort.chunks === 2, `abort mid-stream: stopped after ${abort.chunks} chunks (${abort.error})`);
  check(abort.after.startsWith('The capital of France'), `engine usable after abort: ${JSON.stringify(abort.after)}`);

  const worker = await p2.evaluate(async () => {
    const { createEngine, createWorkerEngine } = await import('/pkg/webmoe.js');
    const url = '/tests/fixtures/mixtral-e8-top2-gqa2-bf16-sharded/';
    const tokens = [5, 17, 99, 3, 200, 42, 7];
    const inPage = await createEngine();
    await inPage.load(url);
    const a = await inPage.logits(tokens);
    const w = await createWorkerEngine(new Worker('/tests/browser/worker.js', { type: 'module' }));
    await w.load(url);
    const b = await w.logits(tokens);
    const text = await (async () => {
      await w.load('/models/smollm2/manifest.json');
      const c = await w.chat.completions.create({ messages: [{ role: 'user', content: 'What is the capital of France?' }], temperature: 0, max_tokens: 12 });
      return c.choices[0].message.content;
    })();
    w.terminate();
    let same = a.length === b.length;
    for (let i = 0; same && i < a.length; i++) same = a[i] === b[i];
    return { same, n: a.length, adapter: w.adapter, text };
  });
  check(worker.same && worker.n > 0, `worker and in-page logits identical (${worker.n} values)`);
  check(worker.text === native, `worker engine chat: ${JSON.stringify(worker.text)}`);
} catch (e) {
  failed = true;
  console.log(`FAIL ${e.stack ?? e}`);
} finally {
  await browser.close();
  await srv.close();
}
process.exit(failed ? 1 : 0);
