// Browser acceptance for the parts that fail: the GPU device and browser storage, in
// headless Chromium over WebGPU.
//  1. Device loss (SmolLM2): a test hook destroys the engine's device in the middle of a
//     reply. The call fails with a retryable DeviceLostError; the engine reloads the model
//     from storage (no shard fetched) onto a new device and prefills the conversation;
//     the retried answer equals a fresh engine's. The same through the worker engine, and
//     on the chat page, which says that the GPU was reset and that the chat resumed.
//  2. Quota, with the origin's quota constrained through the DevTools protocol
//     (Storage.overrideQuotaForOrigin, which the browser enforces like a real quota): a
//     quota that runs out mid-download is a StorageQuotaError with the bytes needed and
//     available, the shards stored before it are whole (SHA-256 checked) and nothing
//     partial is kept; with the quota back, the next load fetches only the missing
//     shards; and when the estimate shows too little room, the load is refused before
//     anything is fetched.
//  3. Two tabs loading the same model at once: each shard fetched and stored once, both
//     loads complete, the logits equal.
//  4. OPFS: a load into the Origin Private File System equals a Cache API load (the same
//     logits), info() names the backend, and a second load fetches nothing.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { serve } from '../../scripts/serve.mjs';
import { launch, forwardLogs } from './chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PACKED = path.join(ROOT, 'target/packed');
const SMOL = '/models/smollm2/manifest.json';
// A fixture packed into 1 MB shards by scripts/test.sh (four shards), quick to load.
const FIXTURE = 'qwen3moe';
const FIX = `/models/fixtures/${FIXTURE}/manifest.json`;
const TOKENS = [5, 17, 99, 3, 200, 42, 7];

for (const m of ['smollm2', `fixtures/${FIXTURE}`]) {
  if (!fs.existsSync(path.join(PACKED, m, 'manifest.json'))) {
    console.error(`target/packed/${m} is missing: scripts/test.sh packs it (webmoe pack)`);
    process.exit(1);
  }
}
const fixManifest = JSON.parse(fs.readFileSync(path.join(PACKED, 'fixtures', FIXTURE, 'manifest.json')));
const shardPaths = fixManifest.shards.map((s) => `/models/fixtures/${FIXTURE}/${s.file}`);
if (shardPaths.length < 4) {
  console.error(`${FIXTURE} packs into ${shardPaths.length} shards: the storage checks need at least 4`);
  process.exit(1);
}

// `node resilience.mjs [device|storage]` runs one half; no argument runs both.
const parts = process.argv[2] ? [process.argv[2]] : ['device', 'storage'];
const TURN1 = 'What is the capital of France?';
const TURN2 = 'And of Italy?';
const srv = await serve(ROOT, { mounts: { '/models/': PACKED } });
const requests = (prefix) => [...srv.counts.entries()].filter(([k]) => k.startsWith(prefix)).reduce((n, [, c]) => n + c, 0);
const browser = await launch();
let failed = false;
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failed = true;
};

// In the page: turn one, then turn two cut by the device loss after two chunks, then turn
// two again. `e` is an engine with SmolLM2 loaded.
const cutConversation = async (e, turn1, turn2) => {
  const ask = (messages, stream) => ({ messages, stream, temperature: 0, max_tokens: 16 });
  const m1 = [{ role: 'user', content: turn1 }];
  const r1 = (await e.chat.completions.create(ask(m1, false))).choices[0].message.content;
  const m2 = [...m1, { role: 'assistant', content: r1 }, { role: 'user', content: turn2 }];
  let chunks = 0;
  let error = null;
  try {
    for await (const c of await e.chat.completions.create(ask(m2, true))) {
      if (c.choices[0]?.delta?.content && ++chunks === 2) e._destroyDeviceForTest();
    }
  } catch (err) {
    error = { name: err.name, retryable: err.retryable, reason: err.reason, message: err.message, typed: err.constructor?.name };
  }
  const retried = await e.chat.completions.create(ask(m2, false));
  return { r1, m2, chunks, error, answer: retried.choices[0].message.content, stats: e.lastStats, info: await e.info() };
};

try {
  // --- 1. Device loss ------------------------------------------------------------------
  if (parts.includes('device')) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    forwardLogs(page, 'device');
    await page.goto(`${srv.url}/tests/browser/blank.html`);
    await page.evaluate(async (url) => {
      const { createEngine } = await import('/pkg/webmoe.js');
      window.engine = await createEngine();
      await window.engine.load(url);
    }, SMOL);
    srv.counts.clear();
    const r = await page.evaluate(`(${cutConversation})(window.engine, ${JSON.stringify(TURN1)}, ${JSON.stringify(TURN2)})`);
    const refetched = requests('/models/smollm2/shard-');
    const fresh = await page.evaluate(async ({ url, m2 }) => {
      const { createEngine } = await import('/pkg/webmoe.js');
      const e = await createEngine();
      await e.load(url);
      const c = await e.chat.completions.create({ messages: m2, temperature: 0, max_tokens: 16 });
      return c.choices[0].message.content;
    }, { url: SMOL, m2: r.m2 });
    const reset = r.info.device_resets?.[0];
    check(r.error?.name === 'DeviceLostError' && r.error.retryable === true && r.error.typed === 'DeviceLostError' && r.chunks === 2,
      `device destroyed after ${r.chunks} chunks: ${r.error?.name} (retryable ${r.error?.retryable}): ${r.error?.message}`);
    check(reset && reset.restoredTokens > 0 && refetched === 0,
      `rebuilt on a new device in ${reset?.seconds.toFixed(1)} s from storage (${refetched} shard requests), ${reset?.restoredTokens} conversation tokens prefilled again`);
    check(r.answer === fresh && r.answer.length > 0, `resumed answer ${JSON.stringify(r.answer)} equals a fresh engine's ${JSON.stringify(fresh)}`);
    check(r.stats.prefilledTokens < r.stats.promptTokens,
      `the retried turn prefilled ${r.stats.prefilledTokens} of its ${r.stats.promptTokens} prompt tokens (the rest was restored)`);

    const w = await page.evaluate(async ({ url, src, turn1, turn2 }) => {
      const { createWorkerEngine } = await import('/pkg/webmoe.js');
      const e = await createWorkerEngine(new Worker('/tests/browser/worker.js', { type: 'module' }));
      await e.load(url);
      const r = await (new Function('e', 'a', 'b', `return (${src})(e, a, b)`))(e, turn1, turn2);
      e.terminate();
      return r;
    }, { url: SMOL, src: cutConversation.toString(), turn1: TURN1, turn2: TURN2 });
    check(w.error?.name === 'DeviceLostError' && w.error.retryable === true && w.answer === fresh && w.info.device_resets?.length === 1,
      `worker engine: ${w.error?.name} (retryable ${w.error?.retryable}), resumed answer equals the fresh one: ${JSON.stringify(w.answer)}`);
    await ctx.close();
  }

  // The chat page: the device is lost while a reply streams; the page says so, and the
  // reply, asked again on the rebuilt engine, equals the native CLI's.
  if (parts.includes('device')) {
    const native = execFileSync(path.join(ROOT, 'target/release/webmoe'),
      ['generate', '--model', path.join(PACKED, 'smollm2/manifest.json'), '--chat', TURN1, '--temperature', '0'],
      { env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' } }).toString().replace(/\n$/, '');
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    forwardLogs(page, 'chat');
    await page.goto(`${srv.url}/web/?model=${encodeURIComponent(SMOL)}`);
    await page.waitForFunction(() => !document.getElementById('load').disabled, null, { timeout: 60000 });
    await page.fill('#temperature', '0');
    await page.click('#load');
    await page.waitForFunction(() => document.getElementById('model-name').dataset.loaded === '1', null, { timeout: 300000 });
    await page.fill('#input', TURN1);
    await page.click('#send');
    await page.waitForFunction(() => document.querySelector('.msg.assistant')?.textContent.length > 0, null, { timeout: 300000 });
    await page.evaluate(() => window.webmoeEngine._destroyDeviceForTest());
    await page.waitForSelector('.msg.assistant[data-done="1"]', { timeout: 600000 });
    const shown = await page.evaluate(() => ({
      reply: document.querySelector('.msg.assistant').textContent,
      notice: document.querySelector('.msg.notice')?.textContent ?? null,
      resumed: document.querySelector('.msg.notice')?.dataset.resumed === '1',
      errors: document.querySelectorAll('.msg.error').length,
    }));
    check(shown.resumed && shown.errors === 0 && /GPU was reset/.test(shown.notice ?? ''), `chat page: ${JSON.stringify(shown.notice)}`);
    check(shown.reply === native, `chat page reply after the reset ${JSON.stringify(shown.reply)} equals the native CLI's`);
    await ctx.close();
  }

  // --- 2. Quota ------------------------------------------------------------------------
  let cacheLogits = null;
  if (parts.includes('storage')) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    forwardLogs(page, 'quota');
    await page.goto(`${srv.url}/tests/browser/blank.html`);
    const cdp = await ctx.newCDPSession(page);
    const quota = (quotaSize) => cdp.send('Storage.overrideQuotaForOrigin', quotaSize === undefined ? { origin: srv.url } : { origin: srv.url, quotaSize });
    const total = fixManifest.total_bytes;
    const attempt = (url) => page.evaluate(async (url) => {
      const { createEngine, listModels } = await import('/pkg/webmoe.js');
      window.engine ??= await createEngine();
      let error = null;
      try {
        await window.engine.load(url, { storage: 'cache' });
      } catch (e) {
        error = { name: e.name, message: e.message, needed: e.needed, available: e.available };
      }
      const m = (await listModels()).find((x) => x.url.endsWith(url));
      return { error, stored: m?.storedBytes ?? 0, est: await navigator.storage.estimate() };
    }, url);

    // The override is a real quota: a put above it throws QuotaExceededError from the
    // Cache API itself.
    await quota(64 * 1024);
    const real = await page.evaluate(async () => {
      const c = await caches.open('webmoe-quota-probe');
      try {
        await c.put('/probe', new Response(new Uint8Array(1 << 20)));
        return 'stored';
      } catch (e) {
        return e.name;
      } finally {
        await caches.delete('webmoe-quota-probe');
      }
    });
    check(real === 'QuotaExceededError', `quota override is enforced by the browser: a 1 MB put under a 64 KB quota throws ${real}`);

    // Stored shards, each read back and checked against the manifest's SHA-256.
    const storedShards = () => page.evaluate(async ({ url, shards }) => {
      const c = await caches.open('webmoe-models-v1');
      const out = [];
      for (const s of shards) {
        const r = await c.match(new URL(s.file, new URL(url, location.href)).href);
        if (!r) continue;
        const b = await r.arrayBuffer();
        const sha = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', b)), (x) => x.toString(16).padStart(2, '0')).join('');
        out.push({ file: s.file, whole: b.byteLength === s.bytes && sha === s.sha256 });
      }
      return out;
    }, { url: FIX, shards: fixManifest.shards });

    // Room for half the model: the download runs out mid-way (the puts are refused).
    const { usage: base } = await page.evaluate(() => navigator.storage.estimate());
    await quota(base + Math.floor(total / 2));
    srv.counts.clear();
    const cut = await attempt(FIX);
    const kept = await storedShards();
    const keptBytes = fixManifest.shards.filter((s) => kept.some((k) => k.file === s.file)).reduce((n, s) => n + s.bytes, 0);
    check(cut.error?.name === 'StorageQuotaError' && cut.error.needed === total - cut.stored && cut.stored === keptBytes && cut.stored < total && kept.every((k) => k.whole),
      `quota of half the model: ${cut.error?.message}; ${kept.length} of ${shardPaths.length} shards stored (${cut.stored} bytes), each whole and matching its SHA-256`);

    await quota();
    srv.counts.clear();
    const done = await attempt(FIX);
    const refetched = shardPaths.map((p) => srv.counts.get(p) ?? 0);
    const wasKept = (i) => kept.some((k) => k.file === fixManifest.shards[i].file);
    check(!done.error && done.stored === total && refetched.every((n, i) => n === (wasKept(i) ? 0 : 1)),
      `quota back: the load completed fetching ${refetched.reduce((a, b) => a + b, 0)} of ${shardPaths.length} shards (only the ${shardPaths.length - kept.length} missing)`);
    cacheLogits = await page.evaluate(async (tokens) => Array.from(await window.engine.logits(tokens)), TOKENS);

    // Refused before any download when the estimate shows too little room. This Chromium's
    // estimate() does not report a DevTools quota override, so here it is wrapped to
    // report the override's quota (the enforcement stays the browser's).
    await page.evaluate(async (url) => (await import('/pkg/webmoe.js')).deleteModel(url), FIX);
    const { usage: base2 } = await page.evaluate(() => navigator.storage.estimate());
    const q = base2 + Math.floor(total / 2);
    await quota(q);
    await page.evaluate((q) => {
      const orig = navigator.storage.estimate.bind(navigator.storage);
      navigator.storage.estimate = async () => ({ ...(await orig()), quota: q });
    }, q);
    srv.counts.clear();
    const small = await attempt(FIX);
    const fetched = requests(`/models/fixtures/${FIXTURE}/shard-`);
    check(small.error?.name === 'StorageQuotaError' && small.error.needed === total && small.error.available <= total / 2 && fetched === 0 && small.stored === 0,
      `refused up front: ${small.error?.message} (${fetched} shards fetched)`);
    await quota();
    await ctx.close();
  }

  // --- 3. Two tabs at once -------------------------------------------------------------
  if (parts.includes('storage')) {
    const ctx = await browser.newContext();
    const tabs = [await ctx.newPage(), await ctx.newPage()];
    tabs.forEach((t, i) => forwardLogs(t, `tab${i + 1}`));
    for (const t of tabs) await t.goto(`${srv.url}/tests/browser/blank.html`);
    for (const t of tabs) {
      await t.evaluate(async () => {
        const { createEngine } = await import('/pkg/webmoe.js');
        window.engine = await createEngine();
      });
    }
    srv.counts.clear();
    srv.latencyMs = 300; // so that the two downloads overlap
    const load = (t) => t.evaluate(async ({ url, tokens }) => {
      const { hasModel } = await import('/pkg/webmoe.js');
      const fetched = new Set();
      const waited = new Set();
      await window.engine.load(url, {
        onProgress: (p) => (p.phase === 'verify' ? fetched : p.phase === 'wait' ? waited : new Set()).add(p.file),
      });
      return { fetched: fetched.size, waited: waited.size, logits: Array.from(await window.engine.logits(tokens)), has: await hasModel(url) };
    }, { url: FIX, tokens: TOKENS });
    const [a, b] = await Promise.all(tabs.map(load));
    srv.latencyMs = 0;
    const per = shardPaths.map((p) => srv.counts.get(p) ?? 0);
    const same = a.logits.length > 0 && a.logits.every((v, i) => v === b.logits[i]) && a.logits.every((v, i) => v === cacheLogits[i]);
    check(per.every((n) => n === 1) && a.fetched + b.fetched === shardPaths.length && a.waited + b.waited > 0 && a.has && b.has,
      `two tabs at once: every one of ${shardPaths.length} shards fetched once (tab 1 fetched ${a.fetched} and waited for ${a.waited}, tab 2 fetched ${b.fetched} and waited for ${b.waited}), both loads complete`);
    check(same, `two tabs: identical logits (${a.logits.length} values), equal to the single load's`);
    await ctx.close();
  }

  // --- 4. OPFS -------------------------------------------------------------------------
  if (parts.includes('storage')) {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    forwardLogs(page, 'opfs');
    await page.goto(`${srv.url}/tests/browser/blank.html`);
    srv.counts.clear();
    const o = await page.evaluate(async ({ url, tokens }) => {
      const { createEngine, listModels } = await import('/pkg/webmoe.js');
      const e = await createEngine({ storage: 'opfs' });
      await e.load(url);
      const info = await e.info();
      const logits = Array.from(await e.logits(tokens));
      const inCache = !!(await (await caches.open('webmoe-models-v1')).match(new URL(url, location.href).href));
      const again = await createEngine();
      await again.load(url); // 'auto' finds it in OPFS
      return { storage: info.storage, againStorage: (await again.info()).storage, logits, inCache, listed: (await listModels()).map((m) => [m.storage, m.complete]) };
    }, { url: FIX, tokens: TOKENS });
    const fetched = requests(`/models/fixtures/${FIXTURE}/shard-`);
    const same = o.logits.length === cacheLogits.length && o.logits.every((v, i) => v === cacheLogits[i]);
    check(o.storage === 'opfs' && same, `OPFS load: info().storage ${JSON.stringify(o.storage)}, logits identical to the Cache API load's (${o.logits.length} values)`);
    check(o.againStorage === 'opfs' && fetched === shardPaths.length && !o.inCache && JSON.stringify(o.listed) === '[["opfs",true]]',
      `second load found it in OPFS (${fetched} shard requests over both loads, none in the Cache API; listModels ${JSON.stringify(o.listed)})`);
    await ctx.close();
  }
} catch (e) {
  failed = true;
  console.log(`FAIL ${e.stack ?? e}`);
} finally {
  await browser.close();
  await srv.close();
}
process.exit(failed ? 1 : 0);
