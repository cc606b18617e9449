// Where a packed model's files live in the browser. Two backends with one interface:
//  - 'cache': the Cache API, each file a Response under its absolute URL (the default;
//    every browser with WebGPU has it);
//  - 'opfs': the Origin Private File System, one directory per model, for models over
//    2 GB and for browsers whose Cache API allows little.
// A model's backend object: readManifest() / writeManifest(text), has(shard) /
// read(shard) / write(shard, bytes) / remove(shard), removeAll(). Writes are atomic: a
// Cache API put stores the whole response or nothing, and an OPFS writable writes to a
// swap file that replaces the file only when closed, so a failed or interrupted write
// never leaves a partial shard that looks whole.

const CACHE = 'webmoe-models-v1';
const OPFS_DIR = 'webmoe-models-v1';
const SHA_HEADER = 'X-Webmoe-Sha256';

export const BACKENDS = ['cache', 'opfs'];

export function cacheAvailable() {
  return !!globalThis.caches;
}

export function opfsAvailable() {
  return typeof navigator !== 'undefined' && typeof navigator.storage?.getDirectory === 'function';
}

export function shardUrl(manifestUrl, shard) {
  return new URL(shard.file, manifestUrl).href;
}

export function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function openCache() {
  if (!cacheAvailable()) throw new Error('this browser has no Cache API (a secure context, https or localhost, is needed)');
  return caches.open(CACHE);
}

function cacheBackend(url) {
  return {
    name: 'cache',
    async readManifest() {
      const r = await (await openCache()).match(url);
      return r ? r.text() : null;
    },
    async writeManifest(text) {
      await (await openCache()).put(url, new Response(text, { headers: { 'Content-Type': 'application/json' } }));
    },
    // A shard stored for an earlier version of the manifest (other bytes under the same
    // URL) does not count: its digest, kept beside it, must be the manifest's.
    async has(s) {
      const r = await (await openCache()).match(shardUrl(url, s));
      if (!r) return false;
      const sha = r.headers.get(SHA_HEADER);
      return (sha === null || sha === s.sha256) && Number(r.headers.get('Content-Length') ?? s.bytes) === s.bytes;
    },
    async read(s) {
      const r = await (await openCache()).match(shardUrl(url, s));
      return r ? new Uint8Array(await r.arrayBuffer()) : null;
    },
    async write(s, bytes) {
      const headers = { 'Content-Type': 'application/octet-stream', 'Content-Length': String(bytes.length), [SHA_HEADER]: s.sha256 };
      await (await openCache()).put(shardUrl(url, s), new Response(bytes, { headers }));
    },
    async remove(s) {
      await (await openCache()).delete(shardUrl(url, s));
    },
    async removeAll(manifest) {
      const c = await openCache();
      await Promise.all(manifest.shards.map((s) => c.delete(shardUrl(url, s))));
      await c.delete(url);
    },
  };
}

// OPFS: webmoe-models-v1/<SHA-256 of the manifest URL>/ holds manifest.json, url.txt
// (for listing) and one <sha256>.bin per shard: named by content, so a shard of an
// earlier version is never taken for the current one.
async function opfsRoot(create) {
  if (!opfsAvailable()) throw new Error('this browser has no Origin Private File System (navigator.storage.getDirectory)');
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(OPFS_DIR, { create });
}

async function opfsModelDir(url, create) {
  const name = hex(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url))).slice(0, 40);
  try {
    return await (await opfsRoot(create)).getDirectoryHandle(name, { create });
  } catch (e) {
    if (!create && e?.name === 'NotFoundError') return null;
    throw e;
  }
}

function shardName(s) {
  if (!/^[0-9a-f]{64}$/.test(s.sha256)) throw new Error(`shard ${s.file}: '${s.sha256}' is not a SHA-256 digest`);
  return `${s.sha256}.bin`;
}

async function opfsFile(dir, name) {
  if (!dir) return null;
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch (e) {
    if (e?.name === 'NotFoundError') return null;
    throw e;
  }
}

async function opfsWrite(dir, name, data) {
  const handle = await dir.getFileHandle(name, { create: true });
  const w = await handle.createWritable();
  try {
    await w.write(data);
    await w.close();
  } catch (e) {
    await w.abort().catch(() => {});
    throw e;
  }
}

function opfsBackend(url) {
  const dir = (create) => opfsModelDir(url, create);
  return {
    name: 'opfs',
    async readManifest() {
      const f = await opfsFile(await dir(false), 'manifest.json');
      return f ? f.text() : null;
    },
    async writeManifest(text) {
      const d = await dir(true);
      await opfsWrite(d, 'url.txt', url);
      await opfsWrite(d, 'manifest.json', text);
    },
    async has(s) {
      const f = await opfsFile(await dir(false), shardName(s));
      return !!f && f.size === s.bytes;
    },
    async read(s) {
      const f = await opfsFile(await dir(false), shardName(s));
      return f ? new Uint8Array(await f.arrayBuffer()) : null;
    },
    async write(s, bytes) {
      await opfsWrite(await dir(true), shardName(s), bytes);
    },
    async remove(s) {
      const d = await dir(false);
      await d?.removeEntry(shardName(s)).catch((e) => { if (e?.name !== 'NotFoundError') throw e; });
    },
    async removeAll() {
      const name = (await dir(false))?.name;
      if (name) await (await opfsRoot(false)).removeEntry(name, { recursive: true });
    },
  };
}

/** The backend object for the model whose manifest is at absolute URL `url`. */
export function backend(name, url) {
  if (name === 'cache') return cacheBackend(url);
  if (name === 'opfs') return opfsBackend(url);
  throw new TypeError(`storage '${name}': expected 'cache', 'opfs' or 'auto'`);
}

/** Manifest URLs stored in backend `name`. */
export async function storedUrls(name) {
  if (name === 'cache') {
    if (!cacheAvailable()) return [];
    const keys = await (await openCache()).keys();
    return keys.map((r) => r.url).filter((u) => /manifest\.json(\?|#|$)/.test(u));
  }
  if (!opfsAvailable()) return [];
  let root;
  try {
    root = await opfsRoot(false);
  } catch (e) {
    if (e?.name === 'NotFoundError') return [];
    throw e;
  }
  const out = [];
  for await (const [, h] of root.entries()) {
    if (h.kind !== 'directory') continue;
    const f = await opfsFile(h, 'url.txt');
    if (f && (await opfsFile(h, 'manifest.json'))) out.push(await f.text());
  }
  return out;
}
