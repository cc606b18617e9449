/** Progress of a model load. */
export interface LoadProgress {
  phase: 'download';
  /** File within the model directory, e.g. "model.safetensors". */
  file: string;
  /** Bytes of `file` received so far. */
  loaded: number;
  /** Bytes of `file` in all (0 when the server sends no Content-Length). */
  total: number;
}

export interface LoadOptions {
  onProgress?: (p: LoadProgress) => void;
}

export interface EngineOptions {
  /** KV cache length in tokens (default: min(max_position_embeddings, 4096)). */
  context?: number;
  /** Most prompt tokens per forward step (1 runs every token through the decode kernels). */
  prefillChunk?: number;
  /** Where to fetch webmoe_bg.wasm from (default: next to this module). */
  wasmUrl?: string | URL;
}

export interface Engine {
  /** Loads a Hugging Face model directory (config.json + safetensors) served over HTTP. */
  load(url: string, options?: LoadOptions): Promise<void>;
  /** Logits for `tokens` as a new sequence: tokens.length x vocabSize floats, row-major. */
  logits(tokens: ArrayLike<number>): Promise<Float32Array>;
  /**
   * Greedy continuation of `tokens` (a new sequence) by up to `maxTokens` ids (default 32).
   * `onToken` sees each id as it is produced; returning false stops generation.
   */
  generate(tokens: ArrayLike<number>, options?: { maxTokens?: number; onToken?: (id: number) => boolean | void }): Promise<Uint32Array>;
  /** Vocabulary size of the loaded model (0 before load). */
  readonly vocabSize: number;
  /** The GPU adapter the engine runs on. */
  readonly adapter: string;
}

/** Creates an engine on this page's WebGPU device. Rejects when WebGPU is unavailable. */
export function createEngine(options?: EngineOptions): Promise<Engine>;
