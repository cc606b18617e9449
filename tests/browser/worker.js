// The worker file a user of createWorkerEngine() writes: a few lines.
import { serveWorker } from '/pkg/worker.js';
serveWorker();
