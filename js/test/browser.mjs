// Open deployed pages (rnnexport deploy web) in headless Chromium and print what each page found, as JSON.
//   node test/browser.mjs [--stream] [--screenshot FILE] [--steps N] URL...
// --stream also streams the artifact's longest test case one step per call in the page (test/checks.mjs).
// CHROMIUM (default /usr/bin/chromium) names the browser; nothing is downloaded.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const args = process.argv.slice(2);
const flag = (name) => { const i = args.indexOf(name); if (i < 0) return false; args.splice(i, 1); return true; };
const option = (name) => { const i = args.indexOf(name); return i < 0 ? undefined : args.splice(i, 2)[1]; };
const stream = flag("--stream");
const screenshot = option("--screenshot");
const steps = option("--steps") ?? "200";
const checks = join(dirname(fileURLToPath(import.meta.url)), "checks.mjs");
const profile = mkdtempSync(join(tmpdir(), "rnnexport-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1100, height: 1300 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const results = [];
try {
  for (const url of args) {
    const page = await context.newPage();
    const console_ = [];
    page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
    await page.route("**/__checks.mjs", (route) => route.fulfill({ path: checks, contentType: "text/javascript" }));
    const external = [];
    page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) external.push(r.url()); });
    await page.goto(`${url}${url.includes("?") ? "&" : "?"}steps=${steps}`);
    await page.waitForFunction(() => window.rnnexport?.done === true, null, { timeout: 240_000 });
    const found = await page.evaluate(() => ({ report: window.rnnexport.report, error: window.rnnexport.error, stream: window.rnnexport.stream }));
    if (stream && found.report) {
      found.long_stream = await page.evaluate(async () => {
        const api = await import("./rnnexport/browser.js");
        const { checkLongStream } = await import("./__checks.mjs");
        try { return await checkLongStream(api, new api.UrlSource("./artifact/")); } catch (e) { return { error: e.message }; }
      });
    }
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
    results.push({ url, ...found, external_requests: external, console: console_ });
    await page.close();
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(results) + "\n");
