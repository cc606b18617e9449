// Browser storage for packed models (see `webmoe pack`): a manifest.json and its shards,
// kept in the Cache API under their absolute URLs. Shards are fetched a few at a time,
// checked against the manifest's SHA-256 *before* they are stored, and never stored when
// they fail; a second load reads everything from storage; an interrupted load resumes with
// the shards already stored.

const CACHE = 'webmoe-models-v1';

const abs = (url) => new URL(url, globalThis.location?.href ?? undefined).href;

async function cache() {
  if (!globalThis.caches) throw new Error('this browser has no Cache API (a secure context, https or localhost, is needed)');
  return caches.open(CACHE);
}

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

function abortError(signal) {
  return signal?.reason instanceof Error ? signal.reason : new DOMException('The load was aborted', 'AbortError');
}

function checkManifest(m, url) {
  if (!m || m.format !== 'webmoe-packed' || !Array.isArray(m.shards) || !Array.isArray(m.tensors)) {
    throw new Error(`${url}: not a webmoe packed-model manifest`);
  }
  return m;
}

function shardUrl(manifestUrl, shard) {
  return new URL(shard.file, manifestUrl).href;
}

/** The manifest: from the network when reachable (and refreshed in storage), else stored. */
async function getManifest(url, signal) {
  const c = await cache();
  let text = null;
  let netError = null;
  try {
    const r = await fetch(url, { signal, cache: 'no-store' });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`);
    text = await r.text();
  } catch (e) {
    if (signal?.aborted) throw abortError(signal);
    netError = e;
  }
  if (text === null) {
    const stored = await c.match(url);
    if (!stored) throw netError;
    text = await stored.text();
  }
  const manifest = checkManifest(JSON.parse(text), url);
  return { manifest, text, store: () => c.put(url, new Response(text, { headers: { 'Content-Type': 'application/json' } })) };
}

async function download(url, shard, signal, onBytes) {
  let r;
  try {
    r = await fetch(url, { signal, cache: 'no-store' });
  } catch (e) {
    if (signal?.aborted) throw abortError(signal);
    throw new Error(`shard ${shard.file}: download failed (${e.message ?? e})`);
  }
  if (!r.ok) throw new Error(`shard ${shard.file}: download failed (HTTP ${r.status} ${r.statusText})`);
  const out = new Uint8Array(shard.bytes);
  let at = 0;
  const reader = r.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > out.length) throw new Error(`shard ${shard.file}: larger than the ${shard.bytes} bytes the manifest says`);
    out.set(value, at);
    at += value.length;
    onBytes(value.length);
  }
  if (at !== out.length) throw new Error(`shard ${shard.file}: ${at} bytes received, the manifest says ${shard.bytes}`);
  return out;
}

/**
 * Makes sure every shard of the packed model at `manifestUrl` is stored, downloading only
 * what is missing. onProgress({phase: 'download'|'verify', file, loaded, total}) counts
 * bytes over the whole model (stored shards count as loaded). Resolves to
 * {manifest, text, fetched: number of shards downloaded}.
 */
export async function ensureModel(manifestUrl, { onProgress, signal, concurrency = 4 } = {}) {
  const url = abs(manifestUrl);
  const { manifest, text, store } = await getManifest(url, signal);
  const c = await cache();
  const missing = [];
  let have = 0;
  for (const s of manifest.shards) {
    if (await c.match(shardUrl(url, s))) have += s.bytes;
    else missing.push(s);
  }
  const total = manifest.total_bytes;
  const need = total - have;
  if (need > 0 && navigator.storage?.estimate) {
    const { quota = Infinity, usage = 0 } = await navigator.storage.estimate();
    if (quota - usage < need) {
      const mb = (n) => (n / 1e6).toFixed(0);
      throw new Error(`not enough storage for this model: it needs ${mb(need)} MB more, the browser allows ${mb(Math.max(0, quota - usage))} MB`);
    }
  }
  if (need > 0) navigator.storage?.persist?.().catch(() => {});
  await store();
  let loaded = have;
  const report = (phase, file) => onProgress?.({ phase, file, loaded, total });
  report('download', '');
  let failure = null;
  const queue = [...missing];
  async function worker() {
    while (queue.length && !failure) {
      const s = queue.shift();
      const key = shardUrl(url, s);
      try {
        const bytes = await download(key, s, signal, (n) => { loaded += n; report('download', s.file); });
        report('verify', s.file);
        const digest = hex(await crypto.subtle.digest('SHA-256', bytes));
        if (digest !== s.sha256) {
          loaded -= s.bytes;
          throw new Error(`shard ${s.file}: SHA-256 ${digest} does not match the manifest's ${s.sha256}; it was not stored`);
        }
        await c.put(key, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(bytes.length) } }));
      } catch (e) {
        failure ??= e;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
  if (failure) throw failure;
  return { manifest, text, fetched: missing.length };
}

/** Shard i of a stored model, as bytes. */
export async function readShard(manifestUrl, manifest, i) {
  const c = await cache();
  const r = await c.match(shardUrl(abs(manifestUrl), manifest.shards[i]));
  if (!r) throw new Error(`shard ${manifest.shards[i].file} is not stored`);
  return new Uint8Array(await r.arrayBuffer());
}

/** Whether every shard of the model at `manifestUrl` is stored. */
export async function hasModel(manifestUrl) {
  const url = abs(manifestUrl);
  const c = await cache();
  const m = await c.match(url);
  if (!m) return false;
  const manifest = checkManifest(await m.json(), url);
  for (const s of manifest.shards) if (!(await c.match(shardUrl(url, s)))) return false;
  return true;
}

/** Removes the model's manifest and shards from storage. */
export async function deleteModel(manifestUrl) {
  const url = abs(manifestUrl);
  const c = await cache();
  const m = await c.match(url);
  if (!m) return false;
  const manifest = checkManifest(await m.json(), url);
  await Promise.all(manifest.shards.map((s) => c.delete(shardUrl(url, s))));
  await c.delete(url);
  return true;
}

/** Stored models: [{url, source, bytes, storedBytes, complete}]. */
export async function listModels() {
  const c = await cache();
  const out = [];
  for (const req of await c.keys()) {
    if (!req.url.endsWith('manifest.json')) continue;
    const manifest = checkManifest(await (await c.match(req)).json(), req.url);
    let storedBytes = 0;
    for (const s of manifest.shards) if (await c.match(shardUrl(req.url, s))) storedBytes += s.bytes;
    out.push({ url: req.url, source: manifest.source, bytes: manifest.total_bytes, storedBytes, complete: storedBytes === manifest.total_bytes });
  }
  return out;
}
