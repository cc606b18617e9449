// Browser acceptance for the chat page and the package's storage, API and worker engine,
// in headless Chromium over WebGPU:
//  1. the page loads the packed SmolLM2 and answers "What is the capital of France?" at
//     temperature 0 with exactly the text the native CLI gives (screenshot saved);
//  2. reloading the page loads the model with zero shard requests to the server;
//  3. a shard corrupted on the server: a clear error naming it, nothing stored for it;
//     once fixed, the load completes fetching only what is missing;
//  4. aborting a streamed reply stops it and the engine stays usable;
//  5. the worker engine and the in-page engine give identical logits;
//  6. two requests at once on one engine (in the page and in the worker) run one after
//     the other: no interleaved chunks, each answer equal to the same request run alone;
//  7. hostile model output (HTML with handlers, javascript: links) shown by the chat page
//     stays text: no element or handler is created from it.
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

  // 7: what a model says is shown as text. The reply's chunks come from a stand-in for
  // the engine's completion stream (the page code that shows them is the real one):
  // a real model cannot be made to say exactly this.
  const HOSTILE = ['<img src=x onerror="window.__pwned=1">', ' [click](javascript:window.__pwned=2) ',
    '<script>window.__pwned=3</script><a href="javascript:window.__pwned=4">x</a>', '<svg onload="window.__pwned=5"></svg>'];
  await page.evaluate((chunks) => {
    const e = window.webmoeEngine;
    e.chat.completions.create = async () => (async function* () {
      for (const c of chunks) yield { choices: [{ index: 0, delta: { content: c }, finish_reason: null }] };
    })();
  }, HOSTILE);
  const before = await page.$$eval('.msg.assistant', (l) => l.length);
  await page.fill('#input', 'Say something hostile.');
  await page.click('#send');
  await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant[data-done="1"]').length > n, before, { timeout: 60000 });
  const shown = await page.evaluate(() => {
    const el = [...document.querySelectorAll('.msg.assistant')].pop();
    const all = [...document.querySelectorAll('#messages *')];
    return {
      text: el.textContent,
      children: el.children.length,
      made: all.filter((n) => /^(IMG|SCRIPT|A|SVG|IFRAME)$/i.test(n.tagName)).length,
      handlers: all.filter((n) => [...n.attributes].some((a) => /^on/i.test(a.name) || /javascript:/i.test(a.value))).length,
      pwned: window.__pwned ?? null,
    };
  });
  await page.waitForTimeout(500); // an image error or svg load would have fired by now
  const pwned = await page.evaluate(() => window.__pwned ?? null);
  check(shown.text === HOSTILE.join('') && shown.children === 0 && shown.made === 0 && shown.handlers === 0 && pwned === null,
    `hostile output shown as text: ${shown.text.length} chars, ${shown.children} child elements, ${shown.made} img/script/a/svg, ${shown.handlers} handlers, __pwned ${pwned}`);
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

  // 6: two requests at once wait their turn.
  const concurrent = async (e) => {
    const ask = (q) => ({ messages: [{ role: 'user', content: q }], stream: true, temperature: 0, max_tokens: 12 });
    const order = [];
    const run = async (tag, q) => {
      let text = '';
      for await (const c of await e.chat.completions.create(ask(q))) {
        const d = c.choices[0]?.delta?.content;
        if (d) { order.push(tag); text += d; }
      }
      return text;
    };
    const [a, b] = await Promise.all([run('a', 'What is the capital of France?'), run('b', 'Name a color.')]);
    const alone = async (q) => { let t = ''; for await (const c of await e.chat.completions.create(ask(q))) t += c.choices[0]?.delta?.content ?? ''; return t; };
    const a1 = await alone('What is the capital of France?');
    const b1 = await alone('Name a color.');
    const switches = order.filter((t, i) => i > 0 && t !== order[i - 1]).length;
    return { a, b, same: a === a1 && b === b1, switches, chunks: order.length };
  };
  {
    const r = await p2.evaluate(`(${concurrent.toString()})(window.engine)`);
    check(r.same && r.switches === 1, `in-page engine, two requests at once: ${r.chunks} chunks, ${r.switches} switch between them, answers equal to each alone (${JSON.stringify(r.a)}, ${JSON.stringify(r.b)})`);
  }

  const worker = await p2.evaluate(async (concurrentSrc) => {
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
    const both = await (new Function('e', `return (${concurrentSrc})(e)`))(w);
    w.terminate();
    let same = a.length === b.length;
    for (let i = 0; same && i < a.length; i++) same = a[i] === b[i];
    return { same, n: a.length, adapter: w.adapter, text, both };
  }, concurrent.toString());
  check(worker.same && worker.n > 0, `worker and in-page logits identical (${worker.n} values)`);
  check(worker.text === native, `worker engine chat: ${JSON.stringify(worker.text)}`);
  check(worker.both.same && worker.both.switches === 1, `worker engine, two requests at once: ${worker.both.chunks} chunks, ${worker.both.switches} switch, answers equal to each alone`);
} catch (e) {
  failed = true;
  console.log(`FAIL ${e.stack ?? e}`);
} finally {
  await browser.close();
  await srv.close();
}
process.exit(failed ? 1 : 0);
