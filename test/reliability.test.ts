/**
 * docs/RELIABILITY.md's table, row by row: each row says what input was
 * tried, the exact line the user sees and the exit code or reply; this test
 * tries each input again and fails when the behaviour drifted from the table.
 * `RELIABILITY_UPDATE=1 npx mocha test/dist/reliability.test.js` rewrites
 * the last two columns from what actually happened (then review the diff).
 *
 * Every row also checks "nothing half-done": no stack trace, at most the
 * one line (plus the usual "Try --help" hint), and per kind: no backstore
 * left behind by a refused create, no configfs action and no open UIO
 * device for a refused device, no netlink for a refused daemon.
 */
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HandlerRegistry } from '@tcmu-ts/core';
import { Logger } from '@tcmu-ts/core/host';
import { Daemon } from '@tcmu-ts/workers';
import { runDaemon } from '@tcmu-ts/workers/daemon/main';
import { runAdmin } from '@tcmu-ts/workers/cli/admin';
import { KernelStandIn } from './fixtures/kernel-standin.js';
import { FakeKernelConfigfs, makeKernelTree } from './fixtures/configfs-standin.js';

const DOC = fileURLToPath(new URL('../../docs/RELIABILITY.md', import.meta.url));
const CLI = fileURLToPath(new URL('../../packages/workers/dist/cli/main.js', import.meta.url));
const UPDATE = process.env.RELIABILITY_UPDATE === '1';

interface Row {
  line: number;
  input: string;
  tried: string;
  sees: string;
  outcome: string;
}

const unescape = (cell: string) => cell.trim().replace(/^`(.*)`$/, '$1').replace(/\\\|/g, '|');
const escape = (s: string) => s.replace(/\|/g, '\\|');
const splitCells = (line: string) => line.slice(1, -1).split(/(?<!\\)\|/);

function readRows(): { lines: string[]; rows: Row[] } {
  const lines = readFileSync(DOC, 'utf8').split('\n');
  const rows: Row[] = [];
  // The table of the section "## What was tried" only: other sections have tables of their own.
  let inSection = false;
  lines.forEach((l, i) => {
    if (l.startsWith('## ')) inSection = l.trim() === '## What was tried';
    if (!inSection) return;
    if (!l.startsWith('| ') || /^\| input \|/.test(l) || /^\|[-| ]+\|$/.test(l)) return;
    const c = splitCells(l);
    if (c.length !== 4) throw new Error(`RELIABILITY.md line ${i + 1}: expected 4 cells, got ${c.length}`);
    rows.push({ line: i, input: c[0].trim(), tried: unescape(c[1]), sees: unescape(c[2]), outcome: unescape(c[3]) });
  });
  return { lines, rows };
}

/** Shell-like words: spaces split, single quotes group. */
function words(s: string): string[] {
  const out: string[] = [];
  for (const m of s.matchAll(/'([^']*)'|(\S+)/g)) out.push(m[1] ?? m[2]);
  return out;
}

const errnoName = (status: number) => Object.entries(osConstants.errno).find(([, v]) => v === -status)?.[0] ?? String(status);
/** A log line without its time and pid: "[ERROR] dev: message". */
const logBody = (l: string) => l.trim().replace(/^.*? \d+ (\[[A-Z_]+\])/, '$1');

interface Result {
  sees: string;
  outcome: string;
  /** Everything printed, for the one-line and no-stack-trace checks. */
  all: string[];
}

function tmp(): { dir: string; norm: (s: string) => string } {
  const dir = mkdtempSync(join(tmpdir(), 'tcmu-rel-'));
  return { dir, norm: (s) => s.split(dir).join('$TMP').split(String(process.pid)).join('<pid>') };
}

async function standinDaemon(k: KernelStandIn, out: string[], lockFile?: string): Promise<Daemon> {
  const registry = new HandlerRegistry();
  await registry.loadBuiltins();
  return new Daemon({
    logger: new Logger({ level: 4, stderr: { write: (l: string) => out.push(l) } }),
    registry, handlerSources: new Map(registry.list().map((h) => [h.subtype, h.subtype])),
    root: k.root, configfsIo: k.configfsIo, openNetlink: k.openNetlink, openUio: k.openUio, lockFile,
  });
}

/** runDaemon against a stand-in kernel, stopped as soon as it serves. */
async function runStandinDaemon(k: KernelStandIn, configPath: string, logDir: string): Promise<{ code: number; out: string[] }> {
  const out: string[] = [];
  const code = await runDaemon({
    cli: { logDir }, configPath, stderr: { write: (l: string) => out.push(l) },
    daemonOptions: { root: k.root, configfsIo: k.configfsIo, openNetlink: k.openNetlink, openUio: k.openUio },
    onStarted: async () => {
      setImmediate(() => process.emit('SIGTERM'));
    },
  });
  return { code, out };
}

const RUNNERS: Record<string, (tried: string) => Promise<Result>> = {
  /** The tcmu-ts command itself, in a child process. */
  async 'command line'(tried) {
    const argv = words(tried).slice(1);
    const r = spawnSync(process.execPath, [CLI, ...argv], { encoding: 'utf8', timeout: 20000, env: { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/nonexistent' } });
    const err = r.stderr.split('\n').filter((l) => l !== '');
    return { sees: err[0] ?? '', outcome: `exit ${r.status}`, all: err };
  },

  /** create/list/delete/reconfig against a configfs stand-in that already has user_0/disk0 (ram/1M). */
  async 'admin command'(tried) {
    const { dir, norm } = tmp();
    try {
      await makeKernelTree(dir);
      const k = new FakeKernelConfigfs(dir);
      const run = async (argv: string[]) => {
        const out: string[] = [];
        const err: string[] = [];
        const code = await runAdmin(argv, { out: (s) => out.push(s), err: (s) => err.push(s) }, { root: dir, configfsIo: k, diskWaitMs: 0 });
        return { code, out, err: err.join('').split('\n').filter((l) => l !== '') };
      };
      expect((await run(['create', 'disk0', 'ram/1M', '--size', '1M'])).code).to.equal(0);
      const before = JSON.stringify(readdirSync(join(dir, 'sys/kernel/config/target/core/user_0')).sort());
      const r = await run(words(tried).slice(1));
      if (r.code !== 0) {
        // Refused: nothing created, nothing removed.
        expect(JSON.stringify(readdirSync(join(dir, 'sys/kernel/config/target/core/user_0')).sort()), tried).to.equal(before);
      }
      return { sees: norm(r.err[0] ?? ''), outcome: `exit ${r.code}`, all: r.err };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },

  /** A device created with this dev_config while the daemon runs (netlink ADDED_DEVICE). */
  async cfgstring(tried) {
    const k = new KernelStandIn();
    const out: string[] = [];
    const d = await standinDaemon(k, out);
    try {
      await d.start();
      const slash = tried.indexOf('/');
      const { dev, done } = await k.added({ name: 'disk0', subtype: tried.slice(0, slash), cfgstring: tried.slice(slash + 1), sizeBytes: 1 << 20 });
      const errors = out.filter((l) => /\[(ERROR|CRIT|WARN)/.test(l)).map(logBody);
      if (done.status !== 0) {
        expect(dev.actions, tried).to.deep.equal([]);
        expect(k.opened.size, tried).to.equal(0);
      }
      return {
        sees: (errors[0] ?? '(nothing: accepted)').split(process.cwd()).join('<cwd>'),
        outcome: done.status === 0 ? 'ADDED_DEVICE_DONE 0 (served)' : `ADDED_DEVICE_DONE -${errnoName(done.status)}; the enable write fails`,
        all: errors,
      };
    } finally {
      await d.stop();
      await k.close();
    }
  },

  /** tcmu.conf with this one line; the daemon started against a stand-in kernel and stopped. */
  async 'tcmu.conf'(tried) {
    const { dir, norm } = tmp();
    const k = new KernelStandIn();
    try {
      const conf = join(dir, 'tcmu.conf');
      writeFileSync(conf, `${tried.replace(/\\n/g, '\n')}\n`);
      const { code, out } = await runStandinDaemon(k, conf, dir);
      const warnings = out.filter((l) => /\[(ERROR|CRIT|WARN)/.test(l)).map(logBody);
      const level = out.some((l) => /\[DEBUG\]/.test(l)) ? 'debug' : 'info';
      return { sees: norm(warnings[0] ?? '(nothing)'), outcome: `warning only: the daemon serves (log at ${level}), exit ${code} at SIGTERM`, all: warnings };
    } finally {
      await k.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },

  /** A device present at start whose configfs attribute is this (or missing). */
  async configfs(tried) {
    const k = new KernelStandIn();
    const out: string[] = [];
    const bad = k.addDevice({ name: 'disk0', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
    const good = k.addDevice({ name: 'disk1', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
    const attrib = join(k.root, 'sys/kernel/config/target/core/user_0/disk0');
    const m = /^(\S+) (missing|= (.*))$/.exec(tried);
    if (!m) throw new Error(`configfs row: ${tried}`);
    if (m[2] === 'missing') unlinkSync(join(attrib, m[1]));
    else writeFileSync(join(attrib, m[1]), `${m[3]}\n`);
    const d = await standinDaemon(k, out);
    try {
      await d.start();
      const errors = out.filter((l) => /\[(ERROR|CRIT)/.test(l)).map(logBody);
      const served = [...d.devices.values()].map((s) => s.name);
      expect(served, tried).to.include('disk1');
      expect(good.actions).to.deep.equal(['block_dev=1', 'reset_ring=1', 'block_dev=0']);
      if (!served.includes('disk0')) {
        expect(bad.actions, tried).to.deep.equal([]);
        expect(k.opened.has(bad.minor), tried).to.equal(false);
      }
      return {
        sees: (errors[0] ?? '(nothing)').split(k.root).join(''), // paths as the kernel shows them
        outcome: served.includes('disk0') ? 'served' : 'disk0 left alone (no block, no ring reset, uio closed); disk1 served',
        all: errors,
      };
    } finally {
      await d.stop();
      await k.close();
    }
  },

  /** A second daemon started while `tried` holds the kernel. */
  async 'second daemon'(tried) {
    const { dir, norm } = tmp();
    const k = new KernelStandIn();
    const dev = k.addDevice({ name: 'disk0', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
    const first = await standinDaemon(k, [], /other mount namespace/.test(tried) ? join(dir, 'elsewhere.lock') : undefined);
    try {
      await first.start();
      const actions = dev.actions.length;
      const { code, out } = await runStandinDaemon(k, join(dir, 'none.conf'), dir);
      expect(k.netlinkOpens).to.equal(1);
      expect(dev.actions.length).to.equal(actions);
      const errors = out.filter((l) => /\[(ERROR|CRIT)/.test(l)).map(logBody);
      return { sees: norm(errors[0] ?? '(nothing)').replace(k.root, '').replace(/\$TMP/g, ''), outcome: `exit ${code}; the first daemon keeps serving`, all: errors };
    } finally {
      await first.stop();
      await k.close();
      rmSync(dir, { recursive: true, force: true });
    }
  },
};

describe('docs/RELIABILITY.md: bad input everywhere gets one clear line and an exit code, nothing half-done', function () {
  this.timeout(60000);
  const { lines, rows } = readRows();

  it('has rows of every kind', () => {
    for (const kind of [...Object.keys(RUNNERS), 'DBus']) expect(rows.some((r) => r.input === kind), kind).to.equal(true);
  });

  for (const row of rows) {
    const run = RUNNERS[row.input];
    if (!run) continue; // DBus rows: test/dbus-service.test.ts checks them against a private bus
    it(`${row.input}: ${row.tried}`, async () => {
      const r = await run(row.tried);
      const noise = /^(unable to get monitor info|did not load config file|\d{4}-\d\d-\d\d.*auth)/; // librados' own stderr
      const printed = r.all.filter((l) => !noise.test(l));
      expect(printed.join('\n'), 'no stack trace').to.not.match(/^\s+at /m);
      expect(printed.slice(1).filter((l) => !/^Try 'tcmu-ts( \w+)? --help'\.$/.test(l)), 'one line').to.deep.equal([]);
      if (UPDATE) {
        lines[row.line] = `| ${row.input} | \`${escape(row.tried)}\` | \`${escape(r.sees)}\` | ${escape(r.outcome)} |`;
        return;
      }
      expect(r.sees).to.equal(row.sees);
      expect(r.outcome).to.equal(row.outcome);
    });
  }

  after(() => {
    if (UPDATE) writeFileSync(DOC, lines.join('\n'));
  });
});

