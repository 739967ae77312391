// The fleet console in a real browser (Debian's chromium driven by playwright-core), against a
// fleet server with three real agents syncing (set up by tests/tests/console.rs, which passes
// everything in the environment). Exits non-zero on the first failed check, printing it.
//
// Checks, in order: login throttling; sign-in; overview with the three devices; the device
// list's live search; a device page with its charts and its live refresh (<= 5 s); a refused
// and an accepted bundle upload; a rollout to a label with a canary, watched to healthy,
// promoted, halted, rolled back (devices back on version 1); alarms acknowledged; the drift
// heatmap and a timeline; the audit log; CSRF refused; a viewer sees no action and the API
// answers 403; an admin adds a user and creates and revokes an API token; keyboard sign-in;
// tablet width; no CSP violation or script error anywhere; axe-core finds no serious or
// critical accessibility violation on any page. Screenshots go to $ARTIFACTS.
import { chromium } from "playwright-core";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing environment variable ${k}`);
  return v;
};
const BASE = env("CONSOLE_URL");
const ART = env("ARTIFACTS");
const PW = env("PASSWORD");
const V2 = env("V2_BUNDLE");
const BAD = env("BAD_BUNDLE");
const FAULTY = env("FAULTY_DEVICE"); // device id of the gateway with the bearing fault
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(ART, { recursive: true });
const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const T0 = Date.now();
const log = (m) => console.log(`[console +${((Date.now() - T0) / 1000).toFixed(1)}s] ${m}`);
const problems = [];
function fail(m) {
  throw new Error(m);
}
function check(cond, m) {
  if (!cond) fail(m);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"],
});

async function newPage(opts = {}) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 }, ...opts });
  const page = await ctx.newPage();
  page.setDefaultTimeout(30000);
  page.on("console", (m) => {
    const t = m.text();
    if (/Content.Security.Policy|Refused to (execute|load|apply)/i.test(t)) problems.push(`CSP: ${t}`);
    // 401/403/422/429 answers are what several checks provoke on purpose.
    else if (/Failed to load resource: the server responded with a status of (401|403|422|429)/.test(t)) return;
    else if (m.type() === "error") problems.push(`console error on ${page.url()}: ${t}`);
  });
  page.on("pageerror", (e) => problems.push(`script error on ${page.url()}: ${e.message}`));
  page.on("dialog", (d) => d.accept()); // confirmations: accept (their text is checked where it matters)
  return page;
}

async function signIn(page, user, password) {
  await page.goto(BASE + "/console/login");
  await page.fill("#user", user);
  await page.fill("#password", password);
  const [resp] = await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  return resp;
}

async function shot(page, name) {
  await page.screenshot({ path: `${ART}/${name}.png`, fullPage: true });
}

// Waits until `f()` (run in the test) is truthy, re-checking every 500 ms.
async function until(what, f, timeoutMs = 90000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  fail(`timed out waiting for ${what} (last: ${last})`);
}

const text = (page, sel) => page.locator(sel).first().innerText();
const count = (page, sel) => page.locator(sel).count();

try {
  // ---- login throttling ----
  const p0 = await newPage();
  for (let i = 1; i <= 5; i++) {
    const r = await signIn(p0, "victim", "not the password");
    check(r.status() === 401, `wrong password ${i}: status ${r.status()}`);
    check((await text(p0, "p.error")).includes("wrong user name or password"), "wrong password message");
  }
  const locked = await signIn(p0, "victim", PW);
  check(locked.status() === 429, `sixth attempt (right password) must be throttled, got ${locked.status()}`);
  check(/too many failed sign-ins: try again in \d+ s/.test(await text(p0, "p.error")), "throttle message");
  check(Number(locked.headers()["retry-after"]) > 0, "Retry-After header");
  log("wrong passwords throttled");
  await p0.context().close();

  // ---- operator ----
  const page = await newPage();
  const ok = await signIn(page, "olga", PW);
  check(ok.url().endsWith("/console/"), `after sign-in: ${ok.url()}`);
  await until("three devices online", async () => (await text(page, ".card.online .n")) === "3");
  check((await text(page, ".card.all .n")) === "3", "three devices in all");
  await shot(page, "01-overview");
  log("overview shows the three agents");

  await page.goto(BASE + "/console/devices");
  check((await count(page, "table.devices tbody tr")) === 3, "three rows in the device list");
  await page.fill('input[name="q"]', "gw-3");
  await until("live search narrows to gw-3", async () => (await count(page, "table.devices tbody tr")) === 1 &&
    (await text(page, "table.devices tbody tr")).includes("gw-3"));
  check(page.url().includes("q=gw-3"), `search is in the URL: ${page.url()}`);
  await shot(page, "02-devices-search");
  log("device list searches live");

  await page.goto(`${BASE}/console/devices/${FAULTY}`);
  await until("streams chart", () => page.locator('div.chart[data-chart="streams"] canvas').count());
  await until("drift chart", async () => {
    await page.reload();
    return page.locator('div.chart[data-chart="drift"] canvas').count();
  });
  check(await count(page, "svg.hist rect.dev"), "a feature histogram against its reference");
  // The live region refreshes itself within 5 s.
  const t = Date.now();
  await page.waitForResponse((r) => r.url().includes(`/console/devices/${FAULTY}`) && r.request().headers()["hx-request"] === "true", { timeout: 6000 });
  log(`device page refreshed itself after ${Date.now() - t} ms`);
  await shot(page, "03-device");
  // A command from the console: the device runs it at its next check-in and answers.
  await page.locator("#h-commands ~ p.actions button", { hasText: "Fetch diagnostics" }).click();
  await until("the diagnostics command answered", async () => {
    await page.reload();
    const row = page.locator("table", { hasText: "Attachment" }).locator("tbody tr").first();
    return (await row.count()) > 0 && (await row.innerText()).includes("done") && (await row.locator("a").count()) > 0;
  }, 60000);
  const diag = await page.evaluate(async () => {
    const a = [...document.querySelectorAll("table a")].find((x) => x.href.includes("/v1/operator/commands/"));
    const r = await fetch(a.href);
    return r.json();
  });
  check(diag.attachment && diag.attachment.includes('"outbox"'), `diagnostic bundle fetched: ${JSON.stringify(diag).slice(0, 200)}`);
  log("diagnostics command sent from the console and its bundle read");

  // ---- models: a refused and an accepted upload ----
  await page.goto(BASE + "/console/models");
  await page.setInputFiles("#bundle-file", BAD);
  await page.click('#upload button[type="submit"]');
  await until("refusal shown", async () => (await text(page, "#upload-status")).startsWith("Refused:"));
  const refusal = await text(page, "#upload-status");
  log(`bad bundle: ${refusal}`);
  check(!(await page.locator("table").first().innerText()).includes("#2"), "nothing stored");
  await page.setInputFiles("#bundle-file", V2);
  await page.click('#upload button[type="submit"]');
  await until("upload stored", async () => (await text(page, "#upload-status")).startsWith("Stored pump-anomaly"));
  check(await page.locator("#upload-progress").evaluate((e) => e.value === 100), "progress at 100 %");
  await until("version 2 listed", async () => (await page.locator("#live").innerText()).includes("1.2.0"));
  await shot(page, "04-models");
  log("bundle upload: refused one says why, good one stored");

  // ---- rollouts: start to a label with a canary, promote, halt, roll back ----
  await page.goto(BASE + "/console/rollouts");
  await page.selectOption('select[name="kind"]', "bundle");
  await page.fill('input[name="bundle"]', "pump-anomaly");
  await page.fill('input[name="version_number"]', "2");
  await page.fill('input[name="selector"]', "site=a");
  await page.fill('input[name="canary_label"]', "canary");
  await page.click('#start button[type="submit"]');
  const art = page.locator("article.rollout", { hasText: "pump-anomaly #2" });
  await until("rollout listed", () => art.count());
  check((await art.innerText()).includes("phase canary"), "starts in its canary phase");
  await until("the canary healthy", async () => /healthy\s*1\b/.test(await art.locator(".legend").innerText()), 150000);
  check(/waiting\s*1\b/.test(await art.locator(".legend").innerText()), "the other site=a device waits");
  log("canary healthy");
  await art.locator("button", { hasText: "Promote" }).click();
  await until("both site=a devices healthy", async () => /healthy\s*2\b/.test(await art.locator(".legend").innerText()), 150000);
  await shot(page, "05-rollouts");
  log("promoted: both healthy");
  await art.locator("button", { hasText: "Halt" }).click();
  await until("halted", async () => (await art.locator(".badge").first().innerText()) === "halted");
  await art.locator("button", { hasText: "Roll back" }).click();
  await until("rolled back", async () => (await art.locator(".badge").first().innerText()) === "rolled back");
  await until("every device back on version 1", async () => {
    await page.goto(BASE + "/console/devices?bundle=pump-anomaly%231");
    return (await text(page, "p.summary")).includes("of 3 devices");
  }, 150000);
  log("halted and rolled back: devices on version 1 again");

  // ---- a configuration pushed and rolled out from the console (to a label no device has) ----
  await page.goto(BASE + "/console/rollouts");
  await page.fill('#push-config input[name="name"]', "console-cfg");
  await page.fill('#push-config textarea[name="fragments"]', '[agent]\nid = "gw"\n\n[[sources.simulated]]\nname = "plant"\n');
  await page.click('#push-config button[type="submit"]');
  await until("configuration stored", async () => {
    await page.reload();
    return (await page.locator("#push-config").innerText()).includes("console-cfg #1");
  });
  await page.fill('#push-config input[name="name"]', "console-cfg");
  await page.fill('#push-config textarea[name="fragments"]', '[agent]\nid = "gw"\n[sync]\nserver = "https://fleet:8443"\nserver_ca = "/etc/edge-agent/ca.pem"\nenroll_token = "inline-secret"\n');
  await page.click('#push-config button[type="submit"]');
  await until("an inline secret refused", async () => (await page.locator("body").innerText()).includes("enroll_token"));
  await page.selectOption('select[name="kind"]', "config");
  await page.fill('input[name="bundle"]', "console-cfg");
  await page.fill('input[name="version_number"]', "1");
  await page.fill('input[name="selector"]', "site=nowhere");
  await page.fill('input[name="canary_label"]', "");
  await page.click('#start button[type="submit"]');
  await until("config rollout listed", () => page.locator("article.rollout", { hasText: "config console-cfg #1" }).count());
  log("configuration pushed (inline secret refused) and rolled out from the console");

  // ---- alarms ----
  await page.goto(BASE + "/console/alarms");
  await until("an alarm from the faulty gateway", () => page.locator("table tbody tr").count(), 120000);
  const ack = page.locator("button", { hasText: "Acknowledge" }).first();
  await ack.click();
  await until("acknowledged by olga", async () => (await page.locator("#live").innerText()).includes("olga"));
  await shot(page, "06-alarms");
  log("alarm acknowledged");

  // ---- drift ----
  await page.goto(BASE + "/console/drift");
  await until("heatmap rows", () => page.locator("table.heatmap tbody tr").count());
  await shot(page, "07-drift");
  await page.locator("table.heatmap tbody td a").first().click();
  await until("timeline chart", () => page.locator('div.chart[data-chart="timeline"] canvas').count());
  await shot(page, "08-drift-timeline");
  log("drift heatmap and timeline");

  // ---- audit ----
  await page.goto(BASE + "/console/audit");
  const audit = await page.locator("#live").innerText();
  for (const a of ["rollout.start", "rollout.promote", "rollout.halt", "rollout.rollback", "model.push", "alarm.ack"]) {
    check(audit.includes(a), `audit log lacks ${a}`);
  }
  check(/olga\s+rollout\.start/.test(audit), "rollout.start under olga's name");
  await shot(page, "09-audit");

  // ---- CSRF ----
  const noCsrf = await page.evaluate(async () => {
    const r = await fetch("/v1/operator/enrollment-tokens", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    return [r.status, await r.text()];
  });
  check(noCsrf[0] === 403 && noCsrf[1].includes("CSRF"), `a state change without the CSRF token: ${noCsrf}`);
  const withCsrf = await page.evaluate(async () => {
    const c = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch("/v1/operator/enrollment-tokens", { method: "POST", headers: { "content-type": "application/json", "x-csrf-token": c }, body: "{}" });
    return r.status;
  });
  check(withCsrf === 201, `with the CSRF token: ${withCsrf}`);
  log("CSRF: refused without the token, accepted with it");

  // ---- viewer: keyboard sign-in, no action controls, 403 from the API ----
  const vp = await newPage();
  await vp.goto(BASE + "/console/login");
  await vp.focus("#user");
  await vp.keyboard.type("vic");
  await vp.keyboard.press("Tab");
  await vp.keyboard.type(PW);
  await Promise.all([vp.waitForNavigation(), vp.keyboard.press("Enter")]);
  check(vp.url().endsWith("/console/"), `keyboard sign-in: ${vp.url()}`);
  const rid = await page.evaluate(async () => (await (await fetch("/v1/operator/rollouts")).json())[0].id);
  for (const p of ["/console/", "/console/devices", `/console/devices/${FAULTY}`, "/console/models", "/console/rollouts",
    `/console/rollouts/${rid}`, "/console/drift", "/console/alarms", "/console/audit"]) {
    await vp.goto(BASE + p);
    const n = await count(vp, "button.act, form.api, form#upload");
    check(n === 0, `viewer sees ${n} action control(s) on ${p}`);
  }
  // Their own account page: only their own tokens and password.
  await vp.goto(BASE + "/console/account");
  const targets = await vp.locator("form.api").evaluateAll((fs) => fs.map((f) => f.getAttribute("data-url")));
  check(JSON.stringify(targets.sort()) === JSON.stringify(["/v1/operator/tokens", "/v1/operator/users/vic"]),
    `viewer's account page forms: ${targets}`);
  check((await count(vp, 'a[href="/console/admin"]')) === 0, "viewer sees no admin link");
  const denied = await vp.evaluate(async (id) => {
    const c = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(`/v1/operator/rollouts/${id}/resume`, { method: "POST", headers: { "x-csrf-token": c } });
    return [r.status, await r.text()];
  }, rid);
  check(denied[0] === 403 && denied[1].includes("needs the operator role"), `viewer's API call: ${denied}`);
  const adminPage = await vp.goto(BASE + "/console/admin");
  check(adminPage.status() === 403, `viewer on the admin page: ${adminPage.status()}`);
  log("viewer: no actions shown, API says 403");
  await vp.context().close();

  // ---- admin: users and tokens ----
  const ap = await newPage();
  await signIn(ap, "ada", PW);
  await ap.goto(BASE + "/console/admin");
  const addUser = ap.locator("form.api", { hasText: "Add user" });
  await addUser.locator('input[name="name"]').fill("newop");
  await addUser.locator('input[name="password"]').fill("another long password");
  await addUser.locator('button[type="submit"]').click();
  await until("newop listed", async () => (await ap.locator("#live").innerText()).includes("newop"));
  const tokForm = ap.locator("form.api", { hasText: "Create token" });
  await tokForm.locator('input[name="name"]').fill("ci-deploy");
  await tokForm.locator('button[type="submit"]').click();
  await until("token shown once", async () => (await tokForm.locator(".token-value").innerText()).startsWith("fleet_"));
  await until("token listed", async () => (await ap.locator("#live").innerText()).includes("ci-deploy"));
  const row = ap.locator("#live tr", { hasText: "ci-deploy" });
  await row.locator("button", { hasText: "Revoke" }).click();
  await until("token revoked", async () => (await ap.locator("#live tr", { hasText: "ci-deploy" }).innerText()).includes("revoked"));
  await shot(ap, "10-admin");
  log("admin: user added, token created (shown once) and revoked");

  // ---- tablet width ----
  const tp = await newPage({ viewport: { width: 768, height: 1024 } });
  await signIn(tp, "olga", PW);
  for (const p of ["/console/", "/console/devices", `/console/devices/${FAULTY}`, "/console/rollouts", "/console/drift"]) {
    await tp.goto(BASE + p);
    const over = await tp.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(over <= 0, `${p} overflows a tablet's width by ${over} px`);
  }
  await shot(tp, "11-tablet-overview");
  log("tablet width: no page overflows");

  // ---- accessibility: axe-core on every page (the context bypasses CSP to inject it) ----
  const report = {};
  for (const [user, pages] of [
    ["olga", ["/console/", "/console/devices", `/console/devices/${FAULTY}`, "/console/models", "/console/rollouts",
      `/console/rollouts/${rid}`, "/console/drift", "/console/alarms", "/console/audit", "/console/account"]],
    ["ada", ["/console/admin"]],
  ]) {
    const xp = await newPage({ bypassCSP: true });
    await signIn(xp, user, PW);
    for (const p of pages) {
      await xp.goto(BASE + p);
      await xp.waitForLoadState("networkidle").catch(() => {});
      await xp.addScriptTag({ content: AXE });
      const r = await xp.evaluate(async () => {
        // eslint-disable-next-line no-undef
        const res = await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } });
        return res.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
      });
      report[p] = r;
      const bad = r.filter((v) => v.impact === "serious" || v.impact === "critical");
      if (bad.length) problems.push(`accessibility on ${p}: ${JSON.stringify(bad)}`);
    }
    await xp.context().close();
  }
  const loginPage = await newPage({ bypassCSP: true });
  await loginPage.goto(BASE + "/console/login");
  await loginPage.addScriptTag({ content: AXE });
  report["/console/login"] = await loginPage.evaluate(async () =>
    // eslint-disable-next-line no-undef
    (await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } }))
      .violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help })));
  const badLogin = report["/console/login"].filter((v) => v.impact === "serious" || v.impact === "critical");
  if (badLogin.length) problems.push(`accessibility on the sign-in page: ${JSON.stringify(badLogin)}`);
  writeFileSync(`${ART}/axe-report.json`, JSON.stringify(report, null, 1));
  log(`axe-core: ${Object.keys(report).length} pages checked`);

  if (problems.length) fail("problems found:\n  " + problems.join("\n  "));
  log("all console checks passed");
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      await p.screenshot({ path: `${ART}/failure-${ctx.pages().indexOf(p)}-${Date.now()}.png`, fullPage: true }).catch(() => {});
    }
  }
  if (problems.length) console.error("also:\n  " + problems.join("\n  "));
  await browser.close().catch(() => {});
  process.exit(1);
}
