// A small static file server for the browser tests and the demo: serves the repository
// root on 127.0.0.1 with the right MIME types (application/wasm included) and the
// cross-origin isolation headers threads will need. Counts requests per path.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

/**
 * Serves `root` on 127.0.0.1. `mounts` maps URL prefixes to other directories (the demo
 * serves packed models at /models/); `overrides` maps paths to bytes served instead of the
 * file (tests corrupt a shard this way). `counts` counts requests per path. Setting
 * `latencyMs` delays every response (tests make downloads overlap with it).
 */
export function serve(root, { port = 0, log = false, mounts = {}, overrides = new Map() } = {}) {
  const counts = new Map();
  const ctl = { latencyMs: 0 };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const rel = decodeURIComponent(url.pathname);
    counts.set(rel, (counts.get(rel) ?? 0) + 1);
    if (ctl.latencyMs) await new Promise((r) => setTimeout(r, ctl.latencyMs));
    const mount = Object.keys(mounts).find((m) => rel.startsWith(m));
    const base = mount ? mounts[mount] : root;
    const file = path.normalize(path.join(base, mount ? rel.slice(mount.length) : rel));
    const headers = {
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cache-Control': 'no-store',
    };
    if (overrides.has(rel)) {
      const body = overrides.get(rel);
      res.writeHead(200, { ...headers, 'Content-Type': 'application/octet-stream', 'Content-Length': body.length });
      res.end(body);
      return;
    }
    if (!file.startsWith(path.resolve(base))) {
      res.writeHead(403, headers).end('forbidden');
      return;
    }
    fs.stat(file, (err, st) => {
      let target = file;
      if (!err && st.isDirectory()) target = path.join(file, 'index.html');
      fs.stat(target, (err2, st2) => {
        if (err2 || !st2.isFile()) {
          if (log) console.log(`404 ${rel}`);
          res.writeHead(404, headers).end('not found');
          return;
        }
        res.writeHead(200, {
          ...headers,
          'Content-Type': TYPES[path.extname(target)] ?? 'application/octet-stream',
          'Content-Length': st2.size,
        });
        fs.createReadStream(target).pipe(res);
      });
    });
  });
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      const { port: p } = server.address();
      resolve({
        server,
        url: `http://127.0.0.1:${p}`,
        counts,
        overrides,
        set latencyMs(ms) { ctl.latencyMs = ms; },
        close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
      });
    });
  });
}

// `node scripts/serve.mjs [port]`: serves the repository root, with packed models from
// target/packed/ at /models/, and prints the chat page's URL.
if (import.meta.url === `file://${process.argv[1]}`) {
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
  const port = Number(process.argv[2] ?? 8080);
  const s = await serve(root, { port, mounts: { '/models/': path.join(root, 'target/packed') } });
  console.log(`webmoe chat: ${s.url}/web/  (Ctrl-C to stop)`);
}
