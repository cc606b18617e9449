// webmoe: the npm entry point. Wraps the wasm-bindgen module (./wasm/, built by
// scripts/build-wasm.sh) in a small promise-based API. Calls on one engine run one at a
// time, in order; every failure is a rejected promise with a readable Error.

import init, { WebEngine } from './wasm/webmoe.js';

let ready = null;

/** Loads and instantiates the .wasm once (from next to this file unless `wasmUrl` is given). */
function initOnce(wasmUrl) {
  if (!ready) {
    ready = init(wasmUrl ? { module_or_path: wasmUrl } : undefined).catch((e) => {
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

class Engine {
  #inner;
  #adapterInfo;
  #queue = Promise.resolve();

  constructor(inner, adapterInfo) {
    this.#inner = inner;
    this.#adapterInfo = adapterInfo;
  }

  // Runs `fn` after every earlier call on this engine has settled.
  #serial(fn) {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  /**
   * Loads a Hugging Face model directory served over HTTP (config.json and
   * model.safetensors, or model.safetensors.index.json and its shards).
   */
  load(url, { onProgress } = {}) {
    if (typeof url !== 'string' || url.length === 0) {
      return Promise.reject(new TypeError('load(url): url must be a non-empty string'));
    }
    const cb = typeof onProgress === 'function' ? onProgress : null;
    return this.#serial(() => this.#inner.load(url, cb));
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
    return this.#serial(() => this.#inner.generate(ids, maxTokens, cb));
  }

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
 * Creates an engine on this page's WebGPU device.
 * options: { context?: number (KV cache length), prefillChunk?: number, wasmUrl?: string | URL }
 */
export async function createEngine(options = {}) {
  if (typeof navigator === 'undefined' || !navigator.gpu) {
    throw new Error('WebGPU is not available in this browser (navigator.gpu is missing)');
  }
  await initOnce(options.wasmUrl);
  const inner = await WebEngine.create({ context: options.context, prefillChunk: options.prefillChunk });
  let info = null;
  try {
    info = (await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' }))?.info ?? null;
  } catch {
    // Adapter info is cosmetic.
  }
  return new Engine(inner, info);
}
