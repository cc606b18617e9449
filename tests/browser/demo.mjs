// The demo page (web/) driven like a user would: load the default model, generate from the
// fixture's greedy prompt, and compare the streamed ids with transformers' greedy output.
// Saves a screenshot to target/browser-artifacts/demo.png.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '../../scripts/serve.mjs';
import { launch, forwardLogs } from './chromium.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MODEL = 'mixtral-e8-top2-gqa2-bf16-sharded';
const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests/fixtures', MODEL, 'reference.json'), 'utf8'));

const srv = await serve(ROOT);
const browser = await launch();
let ok = false;
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  forwardLogs(page, 'demo');
  await page.goto(`${srv.url}/web/`);
  await page.waitForFunction(() => !document.getElementById('load').disabled, null, { timeout: 60000 });
  await page.fill('#model-url', `../tests/fixtures/${MODEL}/`);
  await page.click('#load');
  await page.waitForFunction(() => /Loaded|error|not found/i.test(document.getElementById('load-status').textContent), null, { timeout: 120000 });
  const loadStatus = await page.textContent('#load-status');
  await page.fill('#tokens', ref.greedy.prompt.join(', '));
  await page.fill('#max-tokens', String(ref.greedy.tokens.length));
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('stats').textContent.length > 0, null, { timeout: 120000 });
  const output = await page.textContent('#output');
  const stats = await page.textContent('#stats');
  const got = output.split('→')[1]?.trim().split(/\s+/).map(Number) ?? [];
  ok = JSON.stringify(got) === JSON.stringify(ref.greedy.tokens);
  const dir = path.join(ROOT, 'target/browser-artifacts');
  fs.mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: path.join(dir, 'demo.png'), fullPage: true });
  console.log(`${ok ? 'ok  ' : 'FAIL'} demo page: ${loadStatus}`);
  console.log(`     generated ${got.join(' ')} (transformers: ${ref.greedy.tokens.join(' ')}); ${stats}`);
} finally {
  await browser.close();
  await srv.close();
}
process.exit(ok ? 0 : 1);
