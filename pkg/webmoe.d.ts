/** Progress of a model load. */
export interface LoadProgress {
  /** 'download' and 'verify' (packed models, bytes over the whole model), 'wait' (another
   *  tab is fetching this shard), 'upload' (to the GPU), 'experts' (lazily loaded experts:
   *  `loaded` of `total` experts stored; it goes on after the load, through the fill). */
  phase: 'download' | 'verify' | 'wait' | 'upload' | 'quantize' | 'read' | 'experts';
  /** The file (or layer) being worked on. */
  file: string;
  loaded: number;
  /** 0 when unknown (a server without Content-Length). */
  total: number;
  /** Phase 'experts': every expert is stored. */
  complete?: boolean;
}

/** Lazily loaded experts (`load(url, {experts: 'lazy'})`). */
export interface ExpertsStatus {
  /** Expert files stored, of `total`. */
  stored: number;
  total: number;
  totalBytes: number;
  /** Bytes of expert files downloaded since the load (on demand and by the fill). */
  fetchedBytes: number;
  /** Expert files downloaded because the router asked for them. */
  onDemand: number;
  complete: boolean;
}

/** Where packed models are kept: the Cache API, the Origin Private File System, or
 *  'auto' (where the model already is; else OPFS for models over 2 GB; else the Cache API). */
export type StorageBackend = 'auto' | 'cache' | 'opfs';

/** How many of an MoE's experts stay on the GPU (default: all). The rest are uploaded when
 *  a layer's router asks for them; logits are the same as with every expert resident. */
export interface ResidencyOptions {
  /** Expert slots per MoE layer (at least the model's top-k). */
  residentExperts?: number;
  /** Bytes the model may allocate on the GPU: the skeleton, then the KV cache, then as many experts per layer as fit. */
  gpuMemory?: number;
  /** Which resident expert gives way (default 'lru'); 'pinned:N' keeps the N most used; 'none' reuses nothing. */
  expertPolicy?: 'lru' | 'lfu' | 'none' | `pinned:${number}`;
  /** Lookahead: the next layer's router on this layer's residual picks experts to upload early. */
  prefetch?: boolean;
}

export interface LoadOptions extends ResidencyOptions {
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
  /** Overrides the engine's `storage` for this load. */
  storage?: StorageBackend;
  /** 'lazy' (a model packed with `webmoe pack --expert-files`): the load resolves once the
   *  skeleton is stored and on the GPU; each expert is fetched (SHA-256-checked, stored)
   *  when the router first asks for it, and the rest are filled in the background. */
  experts?: 'eager' | 'lazy';
  /** When the background fill starts (default 'after-answer'; 'off': at `fillExperts()`). */
  fill?: 'after-answer' | 'now' | 'off';
  /** Expert files the fill downloads at once (default 2). */
  fillConcurrency?: number;
}

export interface EngineOptions extends ResidencyOptions {
  /** KV cache length in tokens (default: min(max_position_embeddings, 4096)). */
  context?: number;
  /** Most prompt tokens per forward step (1 runs every token through the decode kernels). */
  prefillChunk?: number;
  /** Threads per group of decode-matmul rows (default: 8 on CPU emulators, 32 on GPUs). For A/B runs and tests. */
  gemvLanes?: 8 | 16 | 32;
  /** KV cache storage (default 'f32'): 'f16' halves its memory, keys and values rounded to f16 (packed two per u32; no shader-f16 needed). */
  kv?: 'f32' | 'f16';
  /** Where packed models are kept (default 'auto'). `info().storage` names the one in use. */
  storage?: StorageBackend;
  /** Where to fetch webmoe_bg.wasm from (default: next to this module). */
  wasmUrl?: string | URL;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  stream?: boolean;
  max_tokens?: number;
  /** Default 1; 0 is greedy. */
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  seed?: number;
  stop?: string | string[];
  frequency_penalty?: number;
  presence_penalty?: number;
  repetition_penalty?: number;
  logit_bias?: Record<string, number>;
  signal?: AbortSignal;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string | null;
  choices: { index: number; message: { role: 'assistant'; content: string }; finish_reason: 'stop' | 'length' | 'abort' }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string | null;
  choices: { index: number; delta: { role?: 'assistant'; content?: string }; finish_reason: 'stop' | 'length' | 'abort' | null }[];
  /** On the last chunk only. */
  usage?: Usage;
}

export interface CompletionStats {
  promptTokens: number;
  /** Prompt tokens that were not already in the KV cache from the previous turn. */
  prefilledTokens: number;
  completionTokens: number;
  timeToFirstToken: number;
  prefillTokensPerSecond: number | null;
  decodeTokensPerSecond: number | null;
  /** MoE models: per layer, how often each expert was chosen during the completion. */
  expertCounts: number[][];
  /** MoE models: per MoE layer, routing over this completion's tokens (`webmoe route`'s numbers). */
  routing: LayerRouting[];
  /** Expert paging over this completion (null when every expert is resident). */
  paging: PagingStats | null;
  /** Lazily loaded experts when the first text came, and after the completion. */
  experts: { atFirstToken: ExpertsStatus | null; now: ExpertsStatus } | null;
}

export interface PagingStats {
  steps: number;
  tokens: number;
  /** Needed experts found resident / uploaded, per layer and step. */
  hits: number;
  misses: number;
  hitRate: number;
  upload_bytes: number;
  mbPerToken: number;
  /** Seconds (and ms per token) the host waited for routers' ids. */
  sync_seconds: number;
  hostSyncMsPerToken: number;
  /** Lookahead: experts uploaded early, and the share of needed experts it predicted. */
  prefetched: number;
  prefetchRecall: number | null;
  /** Layer runs split into rounds (more experts needed than slots), and rounds in all. */
  split_layers: number;
  rounds: number;
}

export interface LayerRouting {
  layer: number;
  experts: number;
  k: number;
  tokens: number;
  /** How often each expert was chosen. */
  usage: number[];
  /** Share of consecutive tokens keeping their first-choice expert, and the same at random (1 / experts). */
  same_first: number;
  same_first_random: number;
  /** The same for independent tokens with this layer's usage (sum of squared first-choice shares). */
  same_first_independent: number;
  /** Share of consecutive tokens whose chosen experts overlap, and the same at random. */
  overlap: number;
  overlap_random: number;
  /** Hit rate of a per-layer LRU expert cache of each size from k to all experts, replayed over the completion. */
  lru: { size: number; hit_rate: number }[];
}

export interface StoredModel {
  url: string;
  source: string;
  bytes: number;
  storedBytes: number;
  complete: boolean;
  storage: 'cache' | 'opfs';
}

/** A call failed because the GPU device was lost; the engine rebuilds itself on a new device
 *  (the model from storage, the conversation prefilled again), so the call can be retried. */
export class DeviceLostError extends Error {
  readonly name: 'DeviceLostError';
  readonly retryable: true;
  readonly reason: string;
}

/** Storage ran out while a model was being stored; what is stored is kept. */
export class StorageQuotaError extends Error {
  readonly name: 'StorageQuotaError';
  /** Bytes that were still to be stored. */
  readonly needed: number;
  /** Bytes the browser allows this site now. */
  readonly available: number;
}

export interface DeviceReset {
  reason: string;
  /** Tokens of the conversation prefilled again on the new device. */
  restoredTokens: number;
  model: string | null;
  seconds: number;
}

export interface Engine {
  load(url: string, options?: LoadOptions): Promise<void>;
  logits(tokens: ArrayLike<number>): Promise<Float32Array>;
  generate(tokens: ArrayLike<number>, options?: { maxTokens?: number; onToken?: (id: number) => boolean | void }): Promise<Uint32Array>;
  chat: {
    completions: {
      create(req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  tokenize(text: string, options?: { addSpecialTokens?: boolean }): Promise<Uint32Array>;
  detokenize(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): Promise<string>;
  info(): Promise<Record<string, unknown>>;
  /** `webmoe bench` in the page: tokens/s (median, min, max), time to first token, GPU memory. */
  bench(options?: { promptTokens?: number; genTokens?: number; reps?: number; kernels?: boolean }): Promise<Record<string, unknown>>;
  unload(): Promise<void>;
  hasModel(url: string, options?: { storage?: StorageBackend }): Promise<boolean>;
  deleteModel(url: string, options?: { storage?: StorageBackend }): Promise<boolean>;
  listModels(): Promise<StoredModel[]>;
  readonly adapter: string;
  lastStats: CompletionStats | null;
  /** Lost devices this engine recovered from (in-page engines). */
  readonly deviceResets?: DeviceReset[];
  /** Test hook: destroys the GPU device now, as a driver reset would. */
  _destroyDeviceForTest(): void;
  /** Lazily loaded experts (null for a model loaded whole); a method in worker engines. */
  readonly experts?: ExpertsStatus | null;
  /** Starts (or joins) the background fill of lazily loaded experts; resolves once every
   *  expert is stored and on the GPU. Null for a model loaded whole. */
  fillExperts(): Promise<ExpertsStatus> | null;
  /** Bytes of wasm memory: it only grows, so this is the heap's high-water mark. */
  readonly wasmMemoryBytes?: number | null;
}

/** Creates an engine on this page's WebGPU device. Rejects when WebGPU is unavailable. */
export function createEngine(options?: EngineOptions): Promise<Engine>;
/** The same engine inside a module Web Worker whose script calls serveWorker(). */
export function createWorkerEngine(worker: Worker, options?: EngineOptions): Promise<Engine & { terminate(): void }>;
export function hasModel(url: string, options?: { storage?: StorageBackend }): Promise<boolean>;
export function deleteModel(url: string, options?: { storage?: StorageBackend }): Promise<boolean>;
export function listModels(): Promise<StoredModel[]>;
