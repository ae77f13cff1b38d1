// A headless Chromium for the dashboard tests, driven over stdio.
//
// Python (tests/test_dashboard.py) writes one JSON command per line on stdin
// and reads one JSON answer per line on stdout: {"id", "ok", "result"} or
// {"id", "ok": false, "error"}.  Commands:
//
//   open       {url, width, height, colorScheme}      -> page id
//   eval       {page, expr}   a JS expression (e.g. "(() => ...)()")  -> its JSON value
//   wait       {page, expr, ms}   until expr is truthy (at most ms)   -> its JSON value
//   click      {page, selector}
//   activate   {page, selector, ms}   focus it and press Enter; false if it is gone
//   press      {page, key}
//   offline    {value}        the browser's network off (true) or on
//   viewport   {page, width, height}
//   screenshot {page, path, fullPage}
//   problems   {page}          page errors and console errors so far
//   close      {page}
//   quit
//
// playwright-core and Debian's chromium (see tests/install-browser.sh), in a
// persistent context on an empty profile directory, as STYLE.md describes.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "explorerd-dashboard-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1280, height: 800 },
  colorScheme: "dark",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

const pages = new Map();
let nextPage = 1;

function page(id) {
  const entry = pages.get(id);
  if (!entry) throw new Error(`no page ${id}`);
  return entry;
}

const commands = {
  async open({ url, width = 1280, height = 800, colorScheme = "dark" }) {
    const p = await context.newPage();
    const id = `p${nextPage++}`;
    const entry = { page: p, problems: [] };
    p.on("pageerror", (e) => entry.problems.push({ kind: "pageerror", text: String(e && e.stack || e) }));
    p.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") entry.problems.push({ kind: m.type(), text: m.text() });
    });
    p.on("requestfailed", (r) => entry.problems.push({ kind: "requestfailed", text: `${r.url()} ${r.failure()?.errorText}` }));
    p.on("response", (r) => {
      if (r.status() >= 400) entry.problems.push({ kind: "http", text: `${r.status()} ${r.url()}` });
    });
    pages.set(id, entry);
    await p.setViewportSize({ width, height });
    await p.emulateMedia({ colorScheme });
    await p.goto(url, { waitUntil: "load" });
    return id;
  },
  async eval({ page: id, expr }) {
    return await page(id).page.evaluate(expr);
  },
  async wait({ page: id, expr, ms = 10000 }) {
    const handle = await page(id).page.waitForFunction(expr, null, { timeout: ms, polling: 50 });
    const value = await handle.jsonValue();
    await handle.dispose();
    return value;
  },
  async click({ page: id, selector }) {
    await page(id).page.click(selector, { timeout: 5000 });
    return true;
  },
  async activate({ page: id, selector, ms = 5000 }) {
    const p = page(id).page;
    try {
      await p.focus(selector, { timeout: ms });
    } catch (e) {
      if (e.name === "TimeoutError") return false; // it went away (a live list moves on)
      throw e;
    }
    await p.keyboard.press("Enter");
    return true;
  },
  async press({ page: id, key }) {
    await page(id).page.keyboard.press(key);
    return true;
  },
  async offline({ value }) {
    await context.setOffline(Boolean(value));
    return true;
  },
  async viewport({ page: id, width, height }) {
    await page(id).page.setViewportSize({ width, height });
    return true;
  },
  async screenshot({ page: id, path: file, fullPage = false, animations = "disabled" }) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    // Rows slide in as blocks arrive: a still picture shows them where they land.
    const style = "*, *::before, *::after { animation: none !important; transition: none !important; }";
    await page(id).page.screenshot({ path: file, fullPage, animations, style });
    return file;
  },
  async problems({ page: id }) {
    return page(id).problems;
  },
  async close({ page: id }) {
    const entry = pages.get(id);
    pages.delete(id);
    if (entry) await entry.page.close();
    return true;
  },
};

async function quit() {
  try {
    await context.close();
  } finally {
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.exit(0);
}

function answer(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

process.stdin.on("end", quit);
const lines = readline.createInterface({ input: process.stdin });
answer({ id: 0, ok: true, result: { ready: true, browser: context.browser()?.version() ?? "chromium" } });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (e) {
    answer({ id: null, ok: false, error: `bad JSON: ${e.message}` });
    continue;
  }
  if (request.cmd === "quit") {
    answer({ id: request.id, ok: true, result: true });
    await quit();
  }
  const command = commands[request.cmd];
  if (!command) {
    answer({ id: request.id, ok: false, error: `unknown command ${request.cmd}` });
    continue;
  }
  try {
    const result = await command(request);
    answer({ id: request.id, ok: true, result: result === undefined ? null : result });
  } catch (e) {
    answer({ id: request.id, ok: false, error: String(e && e.message || e) });
  }
}
