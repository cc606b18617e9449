/** Serves createWorkerEngine() calls from inside a module Web Worker. */
export function serveWorker(scope?: typeof globalThis): void;
