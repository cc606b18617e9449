// createWorkerEngine(worker): the same interface as createEngine(), with the engine in a
// Web Worker (see worker.js), so the page stays responsive while the GPU works.

import { ChunkStream, completionShapes, hasModel, deleteModel, listModels, DeviceLostError } from './webmoe.js';

function toError(e) {
  if (e.name === 'AbortError') return new DOMException(e.message, 'AbortError');
  if (e.name === 'DeviceLostError') return new DeviceLostError(e.reason ?? 'unknown reason');
  const err = new Error(e.message);
  err.name = e.name;
  if (e.name === 'StorageQuotaError') Object.assign(err, { needed: e.needed, available: e.available });
  return err;
}

class WorkerEngine {
  #worker;
  #next = 1;
  #calls = new Map();
  #adapter = '';
  #model = null;
  #expertProgress = null;
  lastStats = null;

  constructor(worker) {
    this.#worker = worker;
    worker.addEventListener('message', (ev) => {
      const { id, result, error, event, data } = ev.data ?? {};
      const call = this.#calls.get(id);
      if (!call) {
        // Lazily loaded experts go on being stored after the load resolved.
        if (event === 'progress' && data?.phase === 'experts') this.#expertProgress?.(data);
        return;
      }
      if (event) {
        call.onEvent?.(event, data);
        return;
      }
      this.#calls.delete(id);
      if (error) call.reject(toError(error));
      else call.resolve(result);
    });
    worker.addEventListener('error', (ev) => {
      for (const c of this.#calls.values()) c.reject(new Error(`worker error: ${ev.message}`));
      this.#calls.clear();
    });
    this.chat = { completions: { create: (req) => this.#create(req) } };
  }

  #call(method, args, { onEvent, signal } = {}) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new DOMException('The operation was aborted', 'AbortError'));
      this.#calls.set(id, { resolve, reject, onEvent });
      signal?.addEventListener('abort', () => this.#worker.postMessage({ id: this.#next++, method: 'abort', args: [id] }), { once: true });
      this.#worker.postMessage({ id, method, args });
    });
  }

  async _create(options) {
    const r = await this.#call('create', [options]);
    this.#adapter = r.adapter;
  }

  async load(url, { onProgress, signal, storage, residentExperts, gpuMemory, expertPolicy, prefetch, experts, fill, fillConcurrency } = {}) {
    const opts = { storage, residentExperts, gpuMemory, expertPolicy, prefetch, experts, fill, fillConcurrency };
    this.#expertProgress = onProgress ?? null;
    await this.#call('load', [url, opts], { signal, onEvent: (e, p) => e === 'progress' && onProgress?.(p) });
    this.#model = url;
  }

  /** Lazily loaded experts: {stored, total, fetchedBytes, onDemand, complete}, or null. */
  experts() {
    return this.#call('experts', []);
  }

  /** Starts (or joins) the background fill of lazily loaded experts; resolves when it is done. */
  fillExperts() {
    return this.#call('fillExperts', []);
  }

  logits(tokens) {
    return this.#call('logits', [Uint32Array.from(tokens)]);
  }

  generate(tokens, { maxTokens = 32, onToken } = {}) {
    return this.#call('generate', [Uint32Array.from(tokens), maxTokens], { onEvent: (e, t) => e === 'token' && onToken?.(t) });
  }

  async #create(req = {}) {
    const { stream = false, signal, ...body } = req;
    const shapes = completionShapes(this.#model);
    if (!stream) {
      let text = '';
      let last = null;
      this.lastStats = await this.#call('chat', [body], {
        signal,
        onEvent: (e, c) => {
          if (e !== 'chunk') return;
          text += c.choices[0]?.delta?.content ?? '';
          if (c.usage) last = c;
        },
      });
      const r = { text, finish_reason: last.choices[0].finish_reason, prompt_tokens: last.usage.prompt_tokens, completion_tokens: last.usage.completion_tokens };
      const full = shapes.full(r);
      full.choices[0].finish_reason = r.finish_reason;
      return full;
    }
    const ac = new AbortController();
    signal?.addEventListener('abort', () => ac.abort(), { once: true });
    const out = new ChunkStream(() => ac.abort());
    this.#call('chat', [body], { signal: ac.signal, onEvent: (e, c) => e === 'chunk' && out.push(c) }).then(
      (stats) => {
        this.lastStats = stats;
        out.end();
      },
      (e) => (signal?.aborted || !ac.signal.aborted ? out.fail(e) : out.end()),
    );
    return out;
  }

  tokenize(text, { addSpecialTokens = true } = {}) {
    return this.#call('tokenize', [text, { addSpecialTokens }]);
  }
  detokenize(ids, { skipSpecialTokens = false } = {}) {
    return this.#call('detokenize', [Array.from(ids), { skipSpecialTokens }]);
  }
  info() {
    return this.#call('info', []);
  }
  async unload() {
    await this.#call('unload', []);
    this.#model = null;
  }
  /** Test hook: destroys the worker engine's GPU device now (see Engine). */
  _destroyDeviceForTest() {
    this.#worker.postMessage({ id: this.#next++, method: 'destroyDeviceForTest', args: [] });
  }
  hasModel(url, opts) { return hasModel(url, opts); }
  deleteModel(url, opts) { return deleteModel(url, opts); }
  listModels() { return listModels(); }
  get adapter() {
    return this.#adapter;
  }
  /** Ends the worker. */
  terminate() {
    this.#worker.terminate();
  }
}

/** An engine running in `worker` (a module Worker whose script calls serveWorker()). */
export async function createWorkerEngine(worker, options = {}) {
  const e = new WorkerEngine(worker);
  await e._create(options);
  return e;
}
