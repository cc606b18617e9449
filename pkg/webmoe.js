// webmoe: the npm entry point. Wraps the wasm-bindgen module (./wasm/, built by
// scripts/build-wasm.sh) in a promise-based API: models from Hugging Face directories,
// GGUF files or packed models kept in browser storage; an OpenAI-style
// `chat.completions.create`; tokenization; stats. Calls on one engine run one at a time,
// in order; every failure is a rejected promise with a readable Error.
//
//   const engine = await createEngine();                     // this page's WebGPU device
//   const engine = await createWorkerEngine(new Worker(...)); // the same, in a Web Worker

import init, { WebEngine } from './wasm/webmoe.js';
import { ensureModel, hasModel, deleteModel, listModels, StorageQuotaError } from './storage.js';

export { hasModel, deleteModel, listModels, StorageQuotaError };

let ready = null;
let exports = null;

/** The wasm module's memory, once it is instantiated. */
function wasmMemory() {
  return exports?.memory ?? null;
}

/** Loads and instantiates the .wasm once (from next to this file unless `wasmUrl` is given). */
function initOnce(wasmUrl) {
  if (!ready) {
    ready = init(wasmUrl ? { module_or_path: wasmUrl } : undefined).then((x) => (exports = x)).catch((e) => {
      ready = null;
      throw e;
    });
  }
  return ready;
}

function toIds(tokens, what) {
  return Uint32Array.from(tokens, (t) => {
    if (!Number.isInteger(t) || t < 0 || t > 0xffffffff) throw new TypeError(`${what}(tokens): ${t} is not a token id`);
    return t;
  });
}

function abortError() {
  return new DOMException('The operation was aborted', 'AbortError');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * The GPU device was lost (a driver reset, the browser reclaiming the GPU) while a call
 * ran. Nothing was wrong with the call: `retryable` is true. The engine rebuilds itself on
 * a new device from what is stored and restores the conversation; calls made from now on
 * wait for that and then run as usual.
 */
export class DeviceLostError extends Error {
  constructor(reason, cause) {
    super(`the GPU device was lost (${reason}); the engine is reloading the model from storage and restoring the conversation: retry the request`, cause ? { cause } : undefined);
    this.name = 'DeviceLostError';
    this.retryable = true;
    this.reason = reason;
  }
}

const FINISH = { stop: 'stop', length: 'length', cancelled: 'abort' };

/**
 * A single-consumer async queue: push() values, end() or fail(); iterate with for await.
 * `onReturn` runs when the consumer stops early.
 */
export class ChunkStream {
  #items = [];
  #waiting = null;
  #done = false;
  #error = null;
  #onReturn;
  constructor(onReturn) {
    this.#onReturn = onReturn;
  }
  push(v) {
    if (this.#waiting) {
      this.#waiting.resolve({ value: v, done: false });
      this.#waiting = null;
    } else this.#items.push(v);
  }
  end() {
    this.#done = true;
    this.#waiting?.resolve({ value: undefined, done: true });
    this.#waiting = null;
  }
  fail(e) {
    this.#error = e;
    this.#waiting?.reject(e);
    this.#waiting = null;
  }
  [Symbol.asyncIterator]() {
    return {
      next: () => {
        if (this.#items.length) return Promise.resolve({ value: this.#items.shift(), done: false });
        if (this.#error) return Promise.reject(this.#error);
        if (this.#done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => (this.#waiting = { resolve, reject }));
      },
      return: () => {
        this.#onReturn?.();
        this.#done = true;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** OpenAI-shaped objects around one completion's events. */
export function completionShapes(model) {
  const id = `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const created = Math.floor(Date.now() / 1000);
  const usage = (r) => ({ prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens, total_tokens: r.prompt_tokens + r.completion_tokens });
  return {
    chunk: (delta, finish = null) => ({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finish }] }),
    last: (r) => ({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta: {}, finish_reason: FINISH[r.finish_reason] ?? r.finish_reason }], usage: usage(r) }),
    full: (r) => ({
      id, object: 'chat.completion', created, model,
      choices: [{ index: 0, message: { role: 'assistant', content: r.text }, finish_reason: FINISH[r.finish_reason] ?? r.finish_reason }],
      usage: usage(r),
    }),
  };
}

class Engine {
  #inner;
  #adapterInfo;
  #options;
  #queue = Promise.resolve();
  #model = null;
  #storage = null;
  /** Why the device was lost, until the engine has been rebuilt on a new one. */
  #lost = null;
  #residency = null;
  /** The last load's options that a reload on a new device repeats. */
  #loadOpts = {};
  /** Lazily loaded experts (an ExpertStore), their background fill, and its settings. */
  #experts = null;
  #fill = null;
  #fillMode = 'after-answer';
  /** Counts loads: background work of an earlier load stops when it changed. */
  #loadTag = 0;
  #expertsAbort = null;
  #unlisten = null;
  #fillConcurrency = 2;
  /** Timings and counts of the last completion. */
  lastStats = null;
  /** Devices lost and recovered from: [{reason, restoredTokens, model, seconds}]. */
  deviceResets = [];

  constructor(inner, adapterInfo, options) {
    this.#inner = inner;
    this.#adapterInfo = adapterInfo;
    this.#options = options;
    this.#residency = options.residency ?? null;
    this.chat = { completions: { create: (req) => this.#create(req) } };
  }

  // Runs `fn` after every earlier call on this engine has settled. A lost device is
  // replaced first; a call that fails because the device was lost rejects with a
  // DeviceLostError, and the engine is rebuilt straight after it.
  #serial(fn, { reload = true } = {}) {
    const run = this.#queue.then(async () => {
      if (this.#lost ?? this.#inner.deviceLost) await this.#recover(reload);
      try {
        return await fn();
      } catch (e) {
        const why = await this.#lossOf(e);
        if (why === null) throw e;
        this.#lost = why;
        throw new DeviceLostError(why, e);
      }
    });
    this.#queue = run.catch(() => {}).then(() => (this.#lost ? this.#recover(true).catch(() => {}) : undefined));
    return run;
  }

  // Whether `e` came from a lost device: the device says so. Its lost callback can come
  // well after the call that failed on it (a map that fails first), so after a GPU error
  // the device is asked again for up to two seconds.
  async #lossOf(e) {
    if (e?.name === 'AbortError' || e instanceof TypeError) return null;
    const gpuError = /^GPU: /.test(String(e?.message ?? ''));
    for (let waited = 0; ; waited += 50) {
      const why = this.#inner.deviceLost;
      if (why) return why;
      if (!gpuError || waited >= 2000) return null;
      await sleep(50);
    }
  }

  // A new device, the model loaded again from storage (no download: its shards are
  // stored), and the conversation the lost device held prefilled into the new cache.
  async #recover(reload) {
    if (!this.#lost && !this.#inner.deviceLost) return;
    const reason = this.#lost ?? this.#inner.deviceLost;
    const t0 = performance.now();
    let tokens = new Uint32Array(0);
    try {
      tokens = this.#inner.cachedTokens();
    } catch {
      // Nothing to restore.
    }
    const fresh = await WebEngine.create(this.#options);
    try {
      this.#inner.free();
    } catch {
      // Already freed.
    }
    this.#inner = fresh;
    const model = reload ? this.#model : null;
    this.#model = null;
    if (model) {
      await this.#loadInto(model, this.#loadOpts);
      if (tokens.length) await this.#inner.restore(tokens);
    }
    this.#lost = null;
    this.deviceResets.push({ reason, restoredTokens: model ? tokens.length : 0, model, seconds: (performance.now() - t0) / 1000 });
  }

  // Ends what belongs to the loaded model's experts: the fill's downloads, its progress.
  #endExperts() {
    this.#expertsAbort?.abort(new DOMException('another model was loaded, or this one unloaded', 'AbortError'));
    this.#expertsAbort = null;
    this.#unlisten?.();
    this.#unlisten = null;
    this.#experts = null;
    this.#fill = null;
  }

  async #loadInto(url, { onProgress, signal, storage, residency, experts = 'eager', fill = 'after-answer', fillConcurrency = 2 }) {
    this.#model = null;
    this.#endExperts();
    const tag = ++this.#loadTag;
    this.#loadOpts = { onProgress, storage, experts, fill, fillConcurrency };
    // Expert residency: the load's own, else the engine's (createEngine), else all resident.
    this.#residency = residency ?? this.#residency;
    this.#inner.setResidency(this.#residency ?? {});
    if (/manifest\.json(\?|#|$)/.test(url)) {
      const abs = new URL(url, globalThis.location?.href).href;
      const m = await ensureModel(abs, { onProgress, signal, storage: storage ?? this.#options.storage ?? 'auto', experts });
      if (signal?.aborted) throw abortError();
      // Experts fetched when the router asks: lazily (their own files, stored as they
      // come), or, when only some stay on the GPU, read back from storage, so the wasm
      // heap never holds them all.
      const r = this.#residency ?? {};
      const paged = r.residentExperts !== undefined || r.gpuMemory !== undefined;
      const getExpert = m.experts ? (i) => m.experts.get(i) : paged ? (i) => m.read(i) : undefined;
      await this.#inner.loadPacked(abs, m.text, (i) => m.read(i), onProgress, getExpert);
      this.#storage = m.storage;
      this.#expertsAbort = new AbortController();
      if (m.experts) {
        // Experts stored out of the total, as they are stored (on demand and by the fill).
        if (onProgress) this.#unlisten = m.experts.onProgress(onProgress);
        await m.experts.refresh();
        this.#experts = m.experts;
        this.#fillMode = fill;
        this.#fillConcurrency = fillConcurrency;
        if (fill === 'now') this.#startFill();
      } else if (getExpert) {
        // A budget that holds every expert: they all go up now, in the background.
        this.#fillGpu(tag).catch(() => {});
      }
    } else {
      await this.#inner.load(url, onProgress);
      this.#storage = null;
    }
    this.#model = url;
  }

  // After an answer: the background fill starts, unless it waits for fillExperts().
  #answered() {
    if (this.#experts && this.#fillMode === 'after-answer') queueMicrotask(() => this.#startFill()?.catch(() => {}));
  }

  // Uploads experts not yet on the GPU into pools that hold all of a layer's experts, a few
  // per call between the engine's other calls, while the model loaded as `tag` is loaded.
  async #fillGpu(tag) {
    for (;;) {
      const left = await this.#serial(() => {
        if (this.#loadTag !== tag) throw new DOMException('another model was loaded, or this one unloaded', 'AbortError');
        return this.#inner.fillExperts(4);
      });
      if (left === 0) return;
    }
  }

  // The background fill of lazily loaded experts: every expert file stored (a few at a
  // time, so that the experts a reply asks for are not kept waiting), then uploaded to
  // the GPU. Rejects with an AbortError when another model is loaded first.
  #startFill() {
    const store = this.#experts;
    if (!store || this.#fill) return this.#fill;
    const tag = this.#loadTag;
    const signal = this.#expertsAbort?.signal;
    this.#fill = (async () => {
      await store.fill({ concurrency: this.#fillConcurrency, signal });
      await this.#fillGpu(tag);
      return this.experts;
    })();
    this.#fill.catch(() => {
      if (this.#experts === store) this.#fill = null;
    });
    return this.#fill;
  }

  /**
   * Lazily loaded experts (`load(url, {experts: 'lazy'})`): {stored, total, storedBytes?,
   * fetchedBytes, onDemand, complete}; null for a model loaded whole.
   */
  get experts() {
    const s = this.#experts;
    return s ? { stored: s.stored, total: s.total, totalBytes: s.totalBytes, fetchedBytes: s.fetchedBytes, onDemand: s.onDemand, complete: s.complete } : null;
  }

  /**
   * The background fill of lazily loaded experts: starts it now unless it runs already,
   * and resolves (to `experts`) once every expert is stored and on the GPU. Null for a
   * model loaded whole.
   */
  fillExperts() {
    return this.#experts ? this.#startFill() : null;
  }

  /** Bytes of wasm memory (it only grows: the high-water mark of the engine's heap). */
  get wasmMemoryBytes() {
    return wasmMemory()?.buffer.byteLength ?? null;
  }

  /**
   * Test hook: destroys the engine's GPU device now, as a driver reset would, even while
   * a call runs (that call then fails with a DeviceLostError).
   */
  _destroyDeviceForTest() {
    this.#inner.destroyDeviceForTest();
  }

  /**
   * Loads a model: a packed model's manifest.json (stored in the browser, verified, resumable),
   * a .gguf file, or a Hugging Face directory. onProgress({phase, file, loaded, total}) with
   * phase 'download', 'verify', 'wait' (another tab is fetching a shard) or 'upload'.
   * `storage` ('auto', 'cache' or 'opfs') overrides the engine's for a packed model.
   * `experts: 'lazy'` (a packed model with an expert per file): the load resolves once
   * the skeleton is stored and on the GPU; each expert is fetched when the router first
   * asks for it, and the rest are filled in the background (phase 'experts' progress
   * counts experts stored): `fill` 'after-answer' (default: once the first reply is
   * done), 'now', or 'off' (then `fillExperts()` starts it); `fillConcurrency` downloads
   * at once (default 2).
   */
  load(url, { onProgress, signal, storage, residentExperts, gpuMemory, expertPolicy, prefetch, experts, fill, fillConcurrency } = {}) {
    if (typeof url !== 'string' || url.length === 0) {
      return Promise.reject(new TypeError('load(url): url must be a non-empty string'));
    }
    const cb = typeof onProgress === 'function' ? onProgress : null;
    return this.#serial(async () => {
      if (signal?.aborted) throw abortError();
      const given = [residentExperts, gpuMemory, expertPolicy, prefetch].some((v) => v !== undefined);
      const residency = given ? { residentExperts, gpuMemory, expertPolicy, prefetch } : undefined;
      if (experts !== undefined && experts !== 'lazy' && experts !== 'eager') throw new TypeError(`load: experts '${experts}': expected 'lazy' or 'eager'`);
      if (fill !== undefined && !['after-answer', 'now', 'off'].includes(fill)) throw new TypeError(`load: fill '${fill}': expected 'after-answer', 'now' or 'off'`);
      await this.#loadInto(url, { onProgress: cb, signal, storage, residency, experts, fill, fillConcurrency });
    }, { reload: false });
  }

  /** Logits for `tokens` as a new sequence: Float32Array of tokens.length x vocabSize, row-major. */
  logits(tokens) {
    let ids;
    try {
      ids = toIds(tokens, 'logits');
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#serial(() => this.#inner.logits(ids));
  }

  /**
   * Greedy continuation of `tokens` (a new sequence): resolves to a Uint32Array of up to
   * `maxTokens` ids. `onToken(id)` sees each id as it is produced; returning false stops.
   */
  generate(tokens, { maxTokens = 32, onToken } = {}) {
    let ids;
    try {
      ids = toIds(tokens, 'generate');
    } catch (e) {
      return Promise.reject(e);
    }
    if (!Number.isInteger(maxTokens) || maxTokens < 0) {
      return Promise.reject(new TypeError('generate: maxTokens must be a non-negative integer'));
    }
    const cb = typeof onToken === 'function' ? onToken : null;
    return this.#serial(async () => {
      const out = await this.#inner.generate(ids, maxTokens, cb);
      this.#answered();
      return out;
    });
  }

  // One completion; `onDelta(text)` returns false to stop. Resolves to the raw result.
  #complete(body, onDelta, signal) {
    return this.#serial(async () => {
      if (signal?.aborted) throw abortError();
      const t0 = performance.now();
      let first = null;
      let atFirst = null;
      const raw = await this.#inner.complete(JSON.stringify(body), (d) => {
        if (first === null) atFirst = this.experts;
        first ??= performance.now();
        if (signal?.aborted) return false;
        return onDelta(d) !== false;
      });
      const t1 = performance.now();
      const r = JSON.parse(raw);
      const ttft = ((first ?? t1) - t0) / 1000;
      const decode = (t1 - (first ?? t1)) / 1000;
      this.lastStats = {
        promptTokens: r.prompt_tokens,
        prefilledTokens: r.prefilled_tokens,
        completionTokens: r.completion_tokens,
        timeToFirstToken: ttft,
        prefillTokensPerSecond: ttft > 0 ? r.prefilled_tokens / ttft : null,
        decodeTokensPerSecond: decode > 0 && r.completion_tokens > 1 ? (r.completion_tokens - 1) / decode : null,
        expertCounts: JSON.parse(await this.#inner.expertCounts()),
        // Per MoE layer over this request's tokens: expert usage, how often consecutive
        // tokens kept their first-choice expert (same_first, beside same_first_random) or
        // shared one (overlap, overlap_random), and LRU hit rates by cache size (lru).
        routing: r.routing ?? [],
        // Expert paging over this request, when some experts are not resident: hits and
        // misses, bytes uploaded, host-sync seconds, lookahead recall (null otherwise).
        // Lazily loaded experts when the first text came, and now.
        experts: this.#experts ? { atFirstToken: atFirst, now: this.experts } : null,
        paging: r.paging ? {
          ...r.paging,
          hitRate: r.paging.hits / Math.max(1, r.paging.hits + r.paging.misses),
          mbPerToken: r.paging.upload_bytes / 1e6 / Math.max(1, r.paging.tokens),
          hostSyncMsPerToken: (1000 * r.paging.sync_seconds) / Math.max(1, r.paging.tokens),
          prefetchRecall: r.paging.needed_predictable > 0 ? r.paging.predicted_needed / r.paging.needed_predictable : null,
        } : null,
      };
      this.#answered();
      if (signal?.aborted) throw abortError();
      return r;
    });
  }

  // chat.completions.create: OpenAI's request and response shapes.
  #create(req = {}) {
    const { stream = false, signal, model: _model, stream_options: _so, ...body } = req;
    if (!Array.isArray(body.messages) && body.prompt === undefined) {
      return Promise.reject(new TypeError('chat.completions.create: messages is required'));
    }
    const shapes = completionShapes(this.#model);
    if (!stream) return this.#complete(body, () => true, signal).then(shapes.full);
    let stopped = false;
    const out = new ChunkStream(() => (stopped = true));
    let sentRole = false;
    this.#complete(body, (d) => {
      if (stopped) return false;
      out.push(shapes.chunk(sentRole ? { content: d } : { role: 'assistant', content: d }));
      sentRole = true;
      return true;
    }, signal).then((r) => {
      out.push(shapes.last(r));
      out.end();
    }, (e) => out.fail(e));
    return Promise.resolve(out);
  }

  /** Token ids of `text` (with the special tokens the model's tokenizer adds, by default). */
  tokenize(text, { addSpecialTokens = true } = {}) {
    return this.#serial(() => this.#inner.tokenize(String(text), addSpecialTokens));
  }

  detokenize(ids, { skipSpecialTokens = false } = {}) {
    return this.#serial(() => this.#inner.detokenize(toIds(ids, 'detokenize'), skipSpecialTokens));
  }

  /**
   * The same measurement as `webmoe bench`: prefill and decode tokens/s (median, min,
   * max over `reps`), time to first token, GPU memory; `kernels` adds per-kernel times.
   */
  bench({ promptTokens = 128, genTokens = 64, reps = 3, kernels = false } = {}) {
    return this.#serial(async () =>
      JSON.parse(await this.#inner.bench(JSON.stringify({ prompt_tokens: promptTokens, gen_tokens: genTokens, reps, kernels }))));
  }

  /** Adapter, features used, limits, and model facts. */
  info() {
    return this.#serial(() => {
      const i = JSON.parse(this.#inner.info());
      i.adapter = this.adapter;
      i.storage = this.#storage;
      i.experts = this.experts;
      i.wasm_memory_bytes = this.wasmMemoryBytes;
      i.device_resets = this.deviceResets;
      return i;
    });
  }

  /** Frees the model and its GPU memory (the engine stays usable for another load). */
  unload() {
    return this.#serial(() => {
      this.#inner.unload();
      this.#model = null;
      this.#storage = null;
      this.#endExperts();
      this.#loadTag++;
    }, { reload: false });
  }

  hasModel(url, opts) { return hasModel(url, opts); }
  deleteModel(url, opts) { return deleteModel(url, opts); }
  listModels() { return listModels(); }

  /** Vocabulary size of the loaded model (0 before load). */
  get vocabSize() {
    return this.#inner.vocabSize;
  }

  /** The GPU adapter the engine runs on. */
  get adapter() {
    // wgpu's WebGPU backend leaves the adapter name empty; ask the browser's GPUAdapterInfo.
    const i = this.#adapterInfo;
    const fromBrowser = i && [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' ');
    return fromBrowser ? `${fromBrowser} (WebGPU)` : this.#inner.adapter;
  }
}

/**
 * Creates an engine on this page's (or worker's) WebGPU device.
 * options: { context?: number (KV cache length), prefillChunk?: number,
 *            gemvLanes?: 8 | 16 | 32 (decode-matmul shape; default: chosen for the adapter),
 *            kv?: 'f32' | 'f16' (KV cache storage; f16 halves its memory),
 *            residentExperts?: number (experts kept on the GPU per MoE layer; the rest
 *              are uploaded when the router asks for them), gpuMemory?: number (bytes the
 *              model may allocate on the GPU), expertPolicy?: 'lru' | 'lfu' | 'pinned:N' |
 *              'none', prefetch?: boolean (lookahead: also load(url, {...}) options),
 *            storage?: 'auto' | 'cache' | 'opfs' (where packed models are kept; 'auto':
 *              where the model already is, else OPFS over 2 GB, else the Cache API),
 *            wasmUrl?: string | URL }
 */
export async function createEngine(options = {}) {
  if (typeof navigator === 'undefined' || !navigator.gpu) {
    throw new Error('WebGPU is not available in this browser (navigator.gpu is missing)');
  }
  await initOnce(options.wasmUrl);
  if (options.storage !== undefined && !['auto', 'cache', 'opfs'].includes(options.storage)) {
    throw new TypeError(`createEngine: storage '${options.storage}': expected 'auto', 'cache' or 'opfs'`);
  }
  const gpuOptions = { context: options.context, prefillChunk: options.prefillChunk, gemvLanes: options.gemvLanes, kv: options.kv };
  const inner = await WebEngine.create(gpuOptions);
  let info = null;
  try {
    info = (await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' }))?.info ?? null;
  } catch {
    // Adapter info is cosmetic.
  }
  const { residentExperts, gpuMemory, expertPolicy, prefetch } = options;
  const residency = { residentExperts, gpuMemory, expertPolicy, prefetch };
  return new Engine(inner, info, { ...gpuOptions, storage: options.storage, residency });
}

export { createWorkerEngine } from './worker-client.js';
