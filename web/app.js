// The chat page: pick a model, load it once (packed models are kept in browser storage),
// then chat. Everything shown to the user is set through textContent, never as HTML.
import { createEngine, listModels, deleteModel } from '../pkg/webmoe.js';

const $ = (id) => document.getElementById(id);
const KNOWN = [
  { name: 'SmolLM2 135M Instruct · Q4_1 · packed', url: '/models/smollm2/manifest.json' },
  { name: 'Other URL…', url: '' },
];

let engine = null;
let messages = [];
let running = null; // AbortController of the reply being generated
let loadCtl = null;

const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

function setStatus(el, text, bad = false) {
  el.textContent = text;
  el.classList.toggle('error', bad);
}

function bubble(role, text) {
  $('empty')?.remove();
  const el = document.createElement('div');
  el.className = `msg ${role}`;
  el.textContent = text;
  $('messages').append(el);
  $('messages').scrollTop = $('messages').scrollHeight;
  return el;
}

function setBusy() {
  const loaded = engine && $('model-name').dataset.loaded === '1';
  $('load').disabled = !engine || !!running || !!loadCtl;
  $('send').disabled = !loaded || !!running;
  $('input').disabled = !loaded;
  $('stop').hidden = !running;
  $('send').hidden = !!running;
  $('cancel-load').hidden = !loadCtl;
}

async function refreshStored() {
  const ul = $('stored');
  ul.replaceChildren();
  let models = [];
  try {
    models = await listModels();
  } catch {
    // No Cache API (insecure context): nothing to list.
  }
  if (!models.length) {
    const li = document.createElement('li');
    li.className = 'muted';
    li.textContent = 'Nothing stored yet';
    ul.append(li);
  }
  for (const m of models) {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.textContent = `${m.source} — ${mb(m.storedBytes)}${m.complete ? '' : ` of ${mb(m.bytes)}`} · ${m.storage === 'opfs' ? 'OPFS' : 'Cache API'}`;
    const del = document.createElement('button');
    del.className = 'ghost';
    del.textContent = 'Delete';
    del.onclick = async () => {
      await deleteModel(m.url);
      refreshStored();
    };
    li.append(name, del);
    ul.append(li);
  }
}

function showStats() {
  const s = engine?.lastStats;
  const box = $('stats');
  box.replaceChildren();
  const item = (label, value) => {
    const span = document.createElement('span');
    const b = document.createElement('b');
    b.textContent = value;
    span.append(`${label} `, b);
    box.append(span);
  };
  item('GPU', engine?.adapter ?? '–');
  if (!s) return;
  item('prefill', s.prefillTokensPerSecond ? `${s.prefillTokensPerSecond.toFixed(1)} tok/s (${s.prefilledTokens} of ${s.promptTokens} tokens)` : '–');
  item('decode', s.decodeTokensPerSecond ? `${s.decodeTokensPerSecond.toFixed(1)} tok/s` : '–');
  item('first token', `${s.timeToFirstToken.toFixed(2)} s`);
  if (s.expertCounts?.length) {
    // Which experts fired in each layer during the last reply.
    const fired = s.expertCounts.map((layer) => layer.filter((c) => c > 0).length);
    item('experts fired per layer', fired.join(' '));
    const grid = document.createElement('div');
    grid.className = 'experts';
    grid.style.gridTemplateColumns = `repeat(${s.expertCounts[0].length}, 10px)`;
    grid.title = 'rows: layers, columns: experts; darker = chosen more often';
    const max = Math.max(1, ...s.expertCounts.flat());
    for (const layer of s.expertCounts) {
      for (const c of layer) {
        const cell = document.createElement('div');
        cell.className = 'cell';
        cell.style.opacity = c ? 0.15 + 0.85 * (c / max) : 0.05;
        grid.append(cell);
      }
    }
    box.append(grid);
  }
  if (s.routing?.length) {
    // Locality over the last reply, averaged over MoE layers: what an expert cache lives on.
    const mean = (f) => s.routing.reduce((a, l) => a + f(l), 0) / s.routing.length;
    const pct = (x) => `${(100 * x).toFixed(0)}%`;
    const half = (l) => l.lru.find((c) => c.size >= l.experts / 2)?.hit_rate ?? 0;
    item('same first expert as the previous token', `${pct(mean((l) => l.same_first))} (random ${pct(mean((l) => l.same_first_random))})`);
    item('LRU hit rate with half the experts', pct(mean(half)));
  }
  if (s.experts) {
    // Lazily loaded experts: what the first token waited for, and what is stored now.
    const { atFirstToken: f, now } = s.experts;
    if (f) item('expert bytes fetched at the first token', `${mb(f.fetchedBytes)} of ${mb(f.totalBytes)}`);
    item('experts stored', `${now.stored} / ${now.total}${now.complete ? ' (complete)' : ''}`);
  }
  if (s.paging) {
    // Experts paged in from host memory (a load with residentExperts or gpuMemory).
    const p = s.paging;
    item('expert cache hits', `${(100 * p.hitRate).toFixed(0)}% (${p.misses} uploads)`);
    item('uploaded per token', `${p.mbPerToken.toFixed(2)} MB, host waits ${p.hostSyncMsPerToken.toFixed(1)} ms`);
  }
}

async function load() {
  const url = $('model-url').value.trim();
  if (!url) return;
  loadCtl = new AbortController();
  setBusy();
  $('progress-box').hidden = false;
  setStatus($('load-status'), '');
  const t0 = performance.now();
  try {
    // ?resident=N (experts per MoE layer on the GPU), ?gpuMemory=BYTES, ?prefetch=1,
    // ?experts=lazy (a model packed with --expert-files: chat starts once the skeleton
    // is stored; experts come as the router asks, the rest after the first answer).
    const q = new URLSearchParams(location.search);
    const num = (k) => (q.has(k) ? Number(q.get(k)) : undefined);
    await engine.load(url, {
      experts: q.get('experts') === 'lazy' ? 'lazy' : undefined,
      residentExperts: num('resident'),
      gpuMemory: num('gpuMemory'),
      prefetch: q.get('prefetch') === '1' || undefined,
      signal: loadCtl.signal,
      onProgress: (p) => {
        const frac = p.total ? p.loaded / p.total : 0;
        $('progress-fill').style.width = `${(100 * frac).toFixed(1)}%`;
        if (p.phase === 'experts') {
          // Goes on after the load: experts stored as the router asks and by the fill.
          $('progress-text').textContent = `experts stored: ${p.loaded} / ${p.total}${p.complete ? ' — all stored, next load needs no download' : ''}`;
          return;
        }
        const what = p.phase === 'upload' ? `uploading to the GPU (${p.file})` : p.phase === 'verify' ? `verifying ${p.file}` : `downloading ${p.file}`;
        $('progress-text').textContent = p.phase === 'upload' ? what : `${what} — ${mb(p.loaded)} / ${mb(p.total)}`;
      },
    });
    $('progress-fill').style.width = '100%';
    $('progress-text').textContent = /manifest\.json/.test(url) ? 'Ready — stored in this browser for next time' : 'Ready';
    $('model-name').textContent = url.split('/').slice(-2).join('/');
    $('model-name').dataset.loaded = '1';
    setStatus($('load-status'), `Loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    newChat();
  } catch (e) {
    setStatus($('load-status'), e.name === 'AbortError' ? 'Load cancelled' : e.message, true);
  } finally {
    loadCtl = null;
    setBusy();
    refreshStored();
  }
}

function newChat() {
  running?.abort();
  messages = [];
  $('messages').replaceChildren();
  showStats();
}

async function send(text) {
  if (!text.trim() || running) return;
  const system = $('system').value.trim();
  if (!messages.length && system) messages.push({ role: 'system', content: system });
  messages.push({ role: 'user', content: text });
  bubble('user', text);
  const out = bubble('assistant', '');
  out.classList.add('streaming');
  running = new AbortController();
  setBusy();
  let reply = '';
  const seed = $('seed').value === '' ? undefined : Number($('seed').value);
  const ask = async () => {
    reply = '';
    const stream = await engine.chat.completions.create({
      messages,
      stream: true,
      temperature: Number($('temperature').value),
      top_p: Number($('top-p').value),
      max_tokens: Number($('max-tokens').value),
      seed,
      signal: running.signal,
    });
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta?.content;
      if (d) {
        reply += d;
        out.textContent = reply;
        $('messages').scrollTop = $('messages').scrollHeight;
      }
    }
  };
  try {
    try {
      await ask();
    } catch (e) {
      // A lost GPU (driver reset, the browser reclaiming it): the engine reloads the model
      // from storage onto a new device and restores the chat; the reply is asked again.
      if (!e.retryable) throw e;
      const note = bubble('notice', `The GPU was reset (${e.reason}). Reloading the model from storage and restoring the chat…`);
      out.before(note);
      out.textContent = '';
      await ask();
      const r = engine.deviceResets?.at(-1);
      note.textContent = `The GPU was reset (${e.reason}); the model was reloaded and the chat resumed${r ? ` (${r.restoredTokens} tokens restored in ${r.seconds.toFixed(1)} s)` : ''}.`;
      note.dataset.resumed = '1';
    }
  } catch (e) {
    if (e.name !== 'AbortError') bubble('error', e.message);
  } finally {
    out.classList.remove('streaming');
    if (!reply) out.textContent = '…';
    messages.push({ role: 'assistant', content: reply });
    out.dataset.done = '1';
    running = null;
    setBusy();
    showStats();
  }
}

async function start() {
  for (const k of KNOWN) {
    const o = document.createElement('option');
    o.value = k.url;
    o.textContent = k.name;
    $('known-models').append(o);
  }
  const params = new URLSearchParams(location.search);
  $('model-url').value = params.get('model') ?? KNOWN[0].url;
  $('known-models').onchange = () => {
    $('model-url').value = $('known-models').value;
    $('model-url').focus();
  };
  $('load').onclick = load;
  $('cancel-load').onclick = () => loadCtl?.abort();
  $('new-chat').onclick = newChat;
  $('stop').onclick = () => running?.abort();
  $('composer').onsubmit = (e) => {
    e.preventDefault();
    const text = $('input').value;
    $('input').value = '';
    send(text);
  };
  $('input').onkeydown = (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  };
  refreshStored();
  if (!navigator.gpu) {
    $('nogpu').hidden = false;
    $('gpu-status').textContent = 'No WebGPU';
    $('gpu-status').classList.add('bad');
    return;
  }
  try {
    engine = await createEngine();
    $('gpu-status').textContent = engine.adapter;
    window.webmoeEngine = engine; // for tests and the console
    setBusy();
    showStats();
    if (params.get('autoload') === '1') load();
  } catch (e) {
    $('gpu-status').textContent = `GPU unavailable: ${e.message}`;
    $('gpu-status').classList.add('bad');
  }
}

start();
