// The worker side of createWorkerEngine(): a real engine inside a Web Worker, answering
// the page's calls. The user's worker file is:
//
//   import { serveWorker } from 'webmoe/worker';
//   serveWorker();

import { createEngine } from './webmoe.js';

export function serveWorker(scope = globalThis) {
  let engine = null;
  const controllers = new Map();
  const post = (msg, transfer) => scope.postMessage(msg, transfer ?? []);
  const need = () => {
    if (!engine) throw new Error('the worker engine is not created');
    return engine;
  };
  scope.addEventListener('message', async (ev) => {
    const { id, method, args = [] } = ev.data ?? {};
    if (method === 'abort') {
      controllers.get(args[0])?.abort();
      return;
    }
    if (method === 'destroyDeviceForTest') {
      // Outside the engine's queue: it is meant to hit a call that is running.
      engine?._destroyDeviceForTest();
      return;
    }
    const ac = new AbortController();
    controllers.set(id, ac);
    try {
      let result;
      let transfer;
      switch (method) {
        case 'create':
          engine = await createEngine(args[0] ?? {});
          result = { adapter: engine.adapter };
          break;
        case 'load':
          await need().load(args[0], { ...(args[1] ?? {}), signal: ac.signal, onProgress: (p) => post({ id, event: 'progress', data: p }) });
          break;
        case 'experts':
          result = need().experts;
          break;
        case 'fillExperts':
          result = await need().fillExperts();
          break;
        case 'logits':
          result = await need().logits(args[0]);
          transfer = [result.buffer];
          break;
        case 'generate':
          result = await need().generate(args[0], { maxTokens: args[1], onToken: (t) => post({ id, event: 'token', data: t }) });
          break;
        case 'chat': {
          const s = await need().chat.completions.create({ ...args[0], stream: true, signal: ac.signal });
          for await (const chunk of s) post({ id, event: 'chunk', data: chunk });
          result = need().lastStats;
          break;
        }
        case 'tokenize':
          result = await need().tokenize(args[0], args[1]);
          break;
        case 'detokenize':
          result = await need().detokenize(args[0], args[1]);
          break;
        case 'info':
          result = await need().info();
          break;
        case 'unload':
          await need().unload();
          break;
        default:
          throw new Error(`unknown method ${method}`);
      }
      post({ id, result }, transfer);
    } catch (e) {
      // The typed errors' fields go with them (DeviceLostError: reason; StorageQuotaError:
      // needed and available bytes).
      const { reason, needed, available } = e ?? {};
      post({ id, error: { name: e?.name ?? 'Error', message: String(e?.message ?? e), reason, needed, available } });
    } finally {
      controllers.delete(id);
    }
  });
}
