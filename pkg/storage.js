// Browser storage for packed models (see `webmoe pack`): a manifest.json and its shards,
// kept in the Cache API or the Origin Private File System (storage-backends.js). Shards
// are fetched a few at a time, checked against the manifest's SHA-256 *before* they are
// stored, and never stored when they fail; a second load reads everything from storage;
// an interrupted load resumes with the shards already stored. Tabs loading the same model
// at once share the work through Web Locks, one lock per shard: each shard is fetched and
// stored once. Running out of quota is a StorageQuotaError that says how many bytes were
// needed and how many the browser allows.

import { backend, BACKENDS, cacheAvailable, hex, opfsAvailable, shardUrl, storedUrls } from './storage-backends.js';

const abs = (url) => new URL(url, globalThis.location?.href ?? undefined).href;
const mb = (n) => `${(n / 1e6).toFixed(1)} MB`;

/**
 * Storage ran out: `needed` bytes were still to be stored, the browser allows `available`
 * more. When a write was refused, `available` is at most that write's size less one byte
 * (the browser's estimate, which can lag behind or ignore a quota, may say more).
 */
export class StorageQuotaError extends Error {
  constructor(needed, available, backendName, cause, refused) {
    const where = backendName === 'opfs' ? 'the Origin Private File System' : 'the Cache API';
    const why = refused ? `the browser refused to store ${refused.file} (${refused.bytes} bytes): it allows at most ${available} bytes (${mb(available)})` : `the browser allows ${available} bytes (${mb(available)})`;
    super(`not enough storage for this model: it needs ${needed} bytes (${mb(needed)}) more, ${why} more for this site in ${where}; free some space or grant persistent storage, then load again (what is stored is kept)`, cause ? { cause } : undefined);
    this.name = 'StorageQuotaError';
    this.needed = needed;
    this.available = available;
  }
}

async function available() {
  if (!navigator.storage?.estimate) return Infinity;
  const { quota = Infinity, usage = 0 } = await navigator.storage.estimate();
  return Math.max(0, quota - usage);
}

function isQuota(e) {
  return e?.name === 'QuotaExceededError' || e?.code === 22;
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

/** The manifest: from the network when reachable, else as one of `stores` holds it. */
async function getManifest(url, stores, signal) {
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
  for (const s of stores) {
    if (text !== null) break;
    text = await s.readManifest().catch(() => null);
  }
  if (text === null) throw netError;
  return { manifest: checkManifest(JSON.parse(text), url), text };
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

// Holds the lock named `name` while `fn` runs: at once when `wait` is false (resolving to
// `busy` if another tab holds it), else after waiting. Without Web Locks, just runs.
function withLock(name, wait, fn, busy) {
  if (!navigator.locks?.request) return fn();
  return navigator.locks.request(name, wait ? {} : { ifAvailable: true }, (lock) => (lock ? fn() : busy));
}

/** Which backend holds (most of) a model, for `storage: 'auto'`; null when none does. */
async function storedIn(url) {
  let best = null;
  for (const name of BACKENDS) {
    if (!(name === 'cache' ? cacheAvailable() : opfsAvailable())) continue;
    const s = backend(name, url);
    const text = await s.readManifest().catch(() => null);
    if (text === null) continue;
    let bytes = 0;
    try {
      for (const sh of checkManifest(JSON.parse(text), url).shards) if (await s.has(sh)) bytes += sh.bytes;
    } catch {
      continue;
    }
    if (!best || bytes > best.bytes) best = { name, bytes };
  }
  return best?.name ?? null;
}

/** The backend a load uses: 'cache', 'opfs', or 'auto' (where the model already is; else
 *  OPFS for models over 2 GB or where there is no Cache API; else the Cache API). */
async function choose(kind, url, totalBytes) {
  if (kind === 'cache' || kind === 'opfs') return kind;
  if (kind !== 'auto') throw new TypeError(`storage '${kind}': expected 'cache', 'opfs' or 'auto'`);
  const there = await storedIn(url);
  if (there) return there;
  if (opfsAvailable() && (!cacheAvailable() || (totalBytes ?? 0) > 2e9)) return 'opfs';
  return 'cache';
}

/**
 * Makes sure every shard of the packed model at `manifestUrl` is stored, downloading only
 * what is missing. onProgress({phase: 'download'|'verify'|'wait', file, loaded, total})
 * counts bytes over the whole model (stored shards count as loaded). `storage`: 'auto'
 * (default), 'cache' or 'opfs'. Resolves to {manifest, text, fetched: shards this call
 * downloaded, storage: the backend's name, read(i): shard i's bytes}.
 *
 * `experts: 'lazy'` (a model packed with `webmoe pack --expert-files`): only the skeleton
 * (every shard that is not an expert's own file) is made sure of; the result's `experts`
 * (an ExpertStore) fetches each expert's file when the engine first asks for it, and
 * fills in the rest in the background.
 */
export async function ensureModel(manifestUrl, { onProgress, signal, concurrency = 4, storage = 'auto', experts = 'eager' } = {}) {
  if (experts !== 'eager' && experts !== 'lazy') throw new TypeError(`experts '${experts}': expected 'eager' or 'lazy'`);
  const url = abs(manifestUrl);
  const { manifest, text } = await getManifest(url, backendsOf(storage).map((b) => backend(b, url)), signal);
  const name = await choose(storage, url, manifest.total_bytes);
  const model = { url, manifest, text, name, store: backend(name, url) };
  const lazy = experts === 'lazy';
  if (lazy && !manifest.shards.some((s) => s.expert)) {
    throw new Error(`${url}: experts: 'lazy' needs a model packed with an expert per file (webmoe pack --expert-files)`);
  }
  const wanted = lazy ? manifest.shards.filter((s) => !s.expert) : manifest.shards;
  const fetched = await ensureShards(model, wanted, { onProgress, signal, concurrency, manifest: true });
  const read = (i) => readShard(model, manifest.shards[i]);
  return { manifest, text, fetched, storage: name, read, experts: lazy ? new ExpertStore(model) : null };
}

async function readShard(model, s) {
  const bytes = await model.store.read(s);
  if (!bytes) throw new Error(`shard ${s.file} is not stored`);
  return bytes;
}

// Downloads, verifies and stores whichever of `shards` are not stored yet (also writing
// the manifest when `manifest`); progress counts bytes over `shards`. Resolves to how many
// shards it downloaded.
async function ensureShards(model, shards, { onProgress, signal, concurrency = 4, manifest = false, onStored } = {}) {
  const { url, text, name, store } = model;
  const missing = [];
  let have = 0;
  for (const s of shards) {
    if (await store.has(s)) have += s.bytes;
    else missing.push(s);
  }
  const total = shards.reduce((n, s) => n + s.bytes, 0);
  const room = missing.length ? await available() : Infinity;
  if (total - have > room) throw new StorageQuotaError(total - have, room, name);
  if (missing.length) navigator.storage?.persist?.().catch(() => {});
  if (manifest) {
    try {
      await store.writeManifest(text);
    } catch (e) {
      throw isQuota(e) ? new StorageQuotaError(total - have, await available(), name, e) : e;
    }
  }
  let loaded = have;
  let stored = have;
  let fetched = 0;
  const report = (phase, file) => onProgress?.({ phase, file, loaded, total });
  report('download', '');
  let failure = null;
  // Fetches, verifies and stores shard `s` unless it is stored by now (another tab).
  const fetchOne = async (s) => {
    if (await store.has(s)) {
      loaded += s.bytes;
      stored += s.bytes;
      report('download', s.file);
      return;
    }
    let got = 0;
    try {
      const bytes = await download(shardUrl(url, s), s, signal, (n) => { got += n; loaded += n; report('download', s.file); });
      report('verify', s.file);
      const digest = hex(await crypto.subtle.digest('SHA-256', bytes));
      if (digest !== s.sha256) throw new Error(`shard ${s.file}: SHA-256 ${digest} does not match the manifest's ${s.sha256}; it was not stored`);
      await store.write(s, bytes);
      stored += s.bytes;
      fetched++;
      onStored?.(s, bytes.length);
    } catch (e) {
      loaded -= got;
      if (!isQuota(e)) throw e;
      // Built after every worker has stopped (below): shards other workers are still
      // writing may land, and `needed` must count what is stored then.
      throw { quota: e, shard: s };
    }
  };
  const lockName = (s) => `webmoe:${name}:${shardUrl(url, s)}`;
  const queue = [...missing];
  const later = [];
  async function worker() {
    // First the shards no other tab is fetching; then, waiting for their locks, the rest.
    while (queue.length && !failure) {
      const s = queue.shift();
      try {
        const r = await withLock(lockName(s), false, () => fetchOne(s), 'busy');
        if (r === 'busy') later.push(s);
      } catch (e) {
        failure ??= e;
      }
    }
    while (later.length && !failure) {
      const s = later.shift();
      report('wait', s.file);
      try {
        await withLock(lockName(s), true, () => fetchOne(s));
      } catch (e) {
        failure ??= e;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, worker));
  if (failure?.quota) {
    const { quota: e, shard: s } = failure;
    const room = Math.min(await available(), s.bytes - 1);
    throw new StorageQuotaError(total - stored, room, name, e, { file: s.file, bytes: s.bytes });
  }
  if (failure) throw failure;
  return fetched;
}

/**
 * A lazily loaded model's experts, each in a file of its own: `get(i)` resolves to expert
 * shard i's bytes, from storage, or downloaded, SHA-256-checked and stored first (the
 * engine asks when the router first needs the expert); `fill()` stores every expert not
 * stored yet, a few at a time, so that a reload needs no download at all. Counts: experts
 * stored of `total`, bytes downloaded, and `complete`.
 */
export class ExpertStore {
  #model;
  #stored = new Set();
  #known = false;
  #fill = null;
  #listeners = new Set();
  total;
  /** Bytes of expert files downloaded by this store (on demand and by the fill). */
  fetchedBytes = 0;
  /** Expert files downloaded when the engine asked for them (not by the fill). */
  onDemand = 0;

  constructor(model) {
    this.#model = model;
    this.shards = model.manifest.shards.map((s, i) => [s, i]).filter(([s]) => s.expert);
    this.total = this.shards.length;
    this.totalBytes = this.shards.reduce((n, [s]) => n + s.bytes, 0);
  }

  get stored() {
    return this.#stored.size;
  }

  get complete() {
    return this.#known && this.#stored.size === this.total;
  }

  /** Calls `fn({phase: 'experts', loaded, total, complete})` as experts are stored. */
  onProgress(fn) {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #report(file) {
    for (const fn of this.#listeners) fn({ phase: 'experts', file, loaded: this.stored, total: this.total, complete: this.complete });
  }

  /** Which experts are stored already (once; stores from then on are counted as they happen). */
  async refresh() {
    if (this.#known) return;
    for (const [s, i] of this.shards) if (await this.#model.store.has(s)) this.#stored.add(i);
    this.#known = true;
    this.#report('');
  }

  #onStored = (s, bytes) => {
    this.fetchedBytes += bytes;
    this.#stored.add(this.#model.manifest.shards.indexOf(s));
    this.#report(s.file);
  };

  /** Expert shard `i`'s bytes (stored first if it was not). */
  async get(i) {
    const s = this.#model.manifest.shards[i];
    if (!s?.expert) throw new Error(`shard ${i} is not an expert's own file`);
    if (!this.#stored.has(i)) {
      const n = await ensureShards(this.#model, [s], { concurrency: 1, onStored: this.#onStored });
      this.onDemand += n;
      this.#stored.add(i);
    }
    return readShard(this.#model, s);
  }

  /**
   * Stores every expert not stored yet, `concurrency` at a time (default 2, leaving room
   * for the engine's own requests). Resolves when all are stored; calling it again while
   * it runs returns the same promise.
   */
  fill({ concurrency = 2, signal } = {}) {
    this.#fill ??= (async () => {
      await this.refresh();
      const missing = this.shards.filter(([, i]) => !this.#stored.has(i)).map(([s]) => s);
      await ensureShards(this.#model, missing, { concurrency, signal, onStored: this.#onStored });
      for (const [, i] of this.shards) this.#stored.add(i);
      this.#report('');
    })().catch((e) => {
      this.#fill = null;
      throw e;
    });
    return this.#fill;
  }
}

function backendsOf(storage) {
  if (storage === undefined || storage === 'auto') return BACKENDS.filter((b) => (b === 'cache' ? cacheAvailable() : opfsAvailable()));
  return [backend(storage, 'about:blank').name];
}

/** Whether every shard of the model at `manifestUrl` is stored (in `storage`, or in any backend). */
export async function hasModel(manifestUrl, { storage } = {}) {
  const url = abs(manifestUrl);
  for (const name of backendsOf(storage)) {
    const s = backend(name, url);
    const text = await s.readManifest();
    if (text === null) continue;
    let all = true;
    for (const sh of checkManifest(JSON.parse(text), url).shards) if (!(await s.has(sh))) { all = false; break; }
    if (all) return true;
  }
  return false;
}

/** Removes the model's manifest and shards from storage (from `storage`, or from every backend). */
export async function deleteModel(manifestUrl, { storage } = {}) {
  const url = abs(manifestUrl);
  let removed = false;
  for (const name of backendsOf(storage)) {
    const s = backend(name, url);
    const text = await s.readManifest();
    if (text === null) continue;
    await s.removeAll(checkManifest(JSON.parse(text), url));
    removed = true;
  }
  return removed;
}

/** Stored models: [{url, source, bytes, storedBytes, complete, storage}]. */
export async function listModels() {
  const out = [];
  for (const name of backendsOf()) {
    for (const url of await storedUrls(name)) {
      const s = backend(name, url);
      const text = await s.readManifest();
      if (text === null) continue;
      const manifest = checkManifest(JSON.parse(text), url);
      let storedBytes = 0;
      for (const sh of manifest.shards) if (await s.has(sh)) storedBytes += sh.bytes;
      out.push({ url, source: manifest.source, bytes: manifest.total_bytes, storedBytes, complete: storedBytes === manifest.total_bytes, storage: name });
    }
  }
  return out;
}
