/**
 * The pure part of core loads no koffi: `@tcmu-ts/core` (the index) and
 * `@tcmu-ts/core/handler` (the contract handlers import) are imported in a
 * fresh node process (fixtures/koffi-probe.js), which reports every module
 * resolution, native addon and CommonJS module the import brought in.
 * `@tcmu-ts/ring` and `@tcmu-ts/core/host` are the controls: they do load
 * koffi, and each detection method must see it there.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ProbeReport, ResolveEdge } from './fixtures/koffi-probe.js';

const PROBE = fileURLToPath(new URL('./fixtures/koffi-probe.js', import.meta.url));
/** koffi, or the per-platform package (@koromix/koffi-linux-x64) that holds its addon. */
const KOFFI = /\/node_modules\/(koffi|@koromix\/koffi-[^/]+)\//;
const KOFFI_ADDON = /koffi[^/]*\.node$/;

/**
 * One known way koffi still gets into the index, in a file this change does
 * not own: scsi/sense.ts imports SenseKey from '@tcmu-ts/ring', whose index
 * loads sys.ts and so koffi. '@tcmu-ts/ring/kernel-scsi' has SenseKey
 * without koffi. Until that line changes, the whole-index test is pending
 * (if this is the only way in); every other way in fails.
 */
function isKnownEdge(e: ResolveEdge): boolean {
  return e.specifier === '@tcmu-ts/ring' && e.parent !== null && /\/packages\/core\/dist\/scsi\/sense\.js$/.test(e.parent);
}

function probe(specifier: string): Promise<ProbeReport> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [PROBE, specifier], { timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`probe of ${specifier} failed: ${err.message}\n${stderr}`));
      const r = JSON.parse(stdout) as ProbeReport;
      if (r.error) return reject(new Error(`import(${JSON.stringify(specifier)}) failed in the probe: ${r.error}`));
      resolve(r);
    });
  });
}

/** Every sign of koffi in the probe's report (resolved URLs, addons, CommonJS modules). */
function koffiSeen(r: ProbeReport): string[] {
  return [
    ...r.edges.filter((e) => KOFFI.test(e.url)).map((e) => `resolved ${e.url}`),
    ...r.addons.filter((a) => KOFFI.test(a) || KOFFI_ADDON.test(a)).map((a) => `dlopen ${a}`),
    ...r.cjs.filter((p) => KOFFI.test(p)).map((p) => `required ${p}`),
  ];
}

/**
 * The shortest import chain from the probed specifier to koffi, as
 * `module -> module` steps, or null; edges `skip` accepts are not followed.
 */
function koffiChain(r: ProbeReport, skip: (e: ResolveEdge) => boolean = () => false): string[] | null {
  const from = new Map<string, ResolveEdge[]>();
  for (const e of r.edges) {
    if (e.parent === null || skip(e)) continue;
    const list = from.get(e.parent) ?? [];
    list.push(e);
    from.set(e.parent, list);
  }
  const starts = r.edges.filter((e) => e.specifier === r.specifier).map((e) => e.url);
  const via = new Map<string, string | null>(starts.map((u) => [u, null]));
  const queue = [...starts];
  while (queue.length > 0) {
    const url = queue.shift()!;
    if (KOFFI.test(url)) {
      const chain: string[] = [];
      for (let u: string | null = url; u !== null; u = via.get(u) ?? null) chain.unshift(u.replace(/^file:\/\/.*?\/(packages|node_modules)\//, '$1/'));
      return chain;
    }
    for (const e of from.get(url) ?? []) {
      if (via.has(e.url)) continue;
      via.set(e.url, url);
      queue.push(e.url);
    }
  }
  return null;
}

describe('core purity: the pure part of core loads no koffi', function () {
  this.timeout(30_000);
  const reports = new Map<string, Promise<ProbeReport>>();
  const report = (s: string): Promise<ProbeReport> => {
    if (!reports.has(s)) reports.set(s, probe(s));
    return reports.get(s)!;
  };

  it('control: importing @tcmu-ts/ring is seen to load koffi, by every method', async () => {
    const r = await report('@tcmu-ts/ring');
    expect(r.edges.some((e) => KOFFI.test(e.url)), 'resolve hook').to.equal(true);
    expect(r.addons.some((a) => KOFFI_ADDON.test(a)), `dlopen saw ${JSON.stringify(r.addons)}`).to.equal(true);
    expect(r.cjs.some((p) => KOFFI.test(p)), 'require cache').to.equal(true);
    expect(koffiChain(r)).to.not.equal(null);
  });

  it('control: @tcmu-ts/core/host loads koffi through its own modules', async () => {
    const r = await report('@tcmu-ts/core/host');
    const chain = koffiChain(r, isKnownEdge);
    expect(chain, 'a chain that does not go through scsi/sense.js').to.not.equal(null);
    expect(chain!.join(' -> ')).to.contain('core/dist/host/');
  });

  it('@tcmu-ts/core/handler loads no koffi', async () => {
    const r = await report('@tcmu-ts/core/handler');
    expect(koffiSeen(r), `import chain: ${koffiChain(r)?.join(' -> ')}`).to.deep.equal([]);
  });

  it('@tcmu-ts/core loads no koffi through control/, handler or handler-loader (nor anything but scsi/sense.js)', async () => {
    const r = await report('@tcmu-ts/core');
    const seen = koffiSeen(r);
    if (seen.length === 0) return;
    const chain = koffiChain(r, isKnownEdge);
    expect(chain, `koffi reached ${chain ? `through ${chain.join(' -> ')}` : ''}`).to.equal(null);
    expect(koffiChain(r), `koffi loaded (${seen.join(', ')}) by no import chain the probe saw`).to.not.equal(null);
  });

  it('@tcmu-ts/core loads no koffi at all', async function () {
    const r = await report('@tcmu-ts/core');
    const seen = koffiSeen(r);
    if (seen.length > 0 && koffiChain(r, isKnownEdge) === null && koffiChain(r) !== null) {
      // Only through scsi/sense.ts's import of '@tcmu-ts/ring' (see isKnownEdge).
      this.skip();
    }
    expect(seen, `import chain: ${koffiChain(r)?.join(' -> ')}`).to.deep.equal([]);
  });
});
