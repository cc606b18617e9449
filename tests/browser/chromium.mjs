// Launches Debian's Chromium headless with WebGPU (SwiftShader on a machine without a GPU),
// with the flags that work as root in a sandbox without network access.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export async function launch() {
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath} (apt-get install chromium, or set CHROMIUM)`);
  }
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'webmoe-chromium-'));
  const args = [
    '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--enable-features=Vulkan', '--use-angle=swiftshader', '--use-webgpu-adapter=swiftshader',
  ];
  const browser = await chromium.launch({ executablePath, headless: true, args });
  return browser;
}

/** Forwards a page's console and errors into this process's log. */
export function forwardLogs(page, prefix = 'page') {
  page.on('console', (m) => {
    const t = m.text();
    // A missing optional file (model.safetensors.index.json) is expected.
    if (m.type() === 'error' && t.includes('404')) return;
    console.error(`[${prefix} ${m.type()}] ${t}`);
  });
  page.on('pageerror', (e) => console.error(`[${prefix} pageerror] ${e.message}`));
}
