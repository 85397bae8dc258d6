#!/usr/bin/env node
// Freeze the built daemon for one VM run:
//
//   node scripts/vm/snapshot-build.mjs <out.tar>
//
// Writes a tar of what `node packages/workers/dist/cli/main.js` needs at run time:
// package.json, packages/*/{package.json,dist/**/*.js}, and the production
// dependency closure of the workspace packages from node_modules (the
// @tcmu-ts/* links included). guest-init.sh unpacks it on the guest's own disk:
// node loads modules from there in about 2 s, against 15-20 s through the 9p
// share under TCG, and a rebuild on the host during the run cannot hand the
// guest a half-written file. A dist/ file that changes while it is copied
// (a concurrent tsc -b) is detected by hashing before and after; the copy is
// retried, and the script fails after 5 tries. Prints the tar's size and file count.
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, lstatSync, readlinkSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: snapshot-build.mjs <out.tar>\n');
  process.exit(2);
}

const pkgDirs = readdirSync(join(repo, 'packages')).map((p) => join(repo, 'packages', p))
  .filter((d) => existsSync(join(d, 'package.json')) && existsSync(join(d, 'dist')));
if (!pkgDirs.some((d) => d.endsWith('/workers'))) {
  process.stderr.write('snapshot-build: packages/workers/dist missing: build first (npx tsc -b tsconfig.json)\n');
  process.exit(1);
}

const walk = (dir, acc = []) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, acc);
    else if (e.isFile() && /\.(js|mjs|cjs|json|node)$/.test(e.name)) acc.push(p);
  }
  return acc;
};
const hashDist = () => {
  const h = createHash('sha256');
  for (const d of pkgDirs) for (const f of walk(join(d, 'dist')).sort()) h.update(f).update(readFileSync(f));
  return h.digest('hex');
};

// Production closure: dependencies + optionalDependencies, resolved the way
// node does (nearest node_modules up the tree), starting from every workspace package.
function closure() {
  const seen = new Map(); // real dir -> path relative to repo (as found)
  const queue = pkgDirs.map((d) => ({ from: d, pkg: d }));
  const visit = (fromDir, name) => {
    let dir = fromDir;
    for (;;) {
      const cand = join(dir, 'node_modules', name);
      if (existsSync(join(cand, 'package.json'))) return cand;
      if (dir === repo || dir === dirname(dir)) return null;
      dir = dirname(dir);
    }
  };
  while (queue.length) {
    const { pkg } = queue.shift();
    const meta = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8'));
    const deps = { ...(meta.dependencies ?? {}), ...(meta.optionalDependencies ?? {}) };
    for (const name of Object.keys(deps)) {
      const found = visit(pkg, name);
      if (!found) continue; // optional dependency for another platform
      const rel = relative(repo, found);
      if (seen.has(rel)) continue;
      seen.set(rel, found);
      queue.push({ from: found, pkg: found });
    }
  }
  return [...seen.keys()].sort();
}

for (let attempt = 1; attempt <= 5; attempt++) {
  const before = hashDist();
  const stage = mkdtempSync(join(tmpdir(), 'tcmu-snap-'));
  try {
    cpSync(join(repo, 'package.json'), join(stage, 'package.json'));
    for (const d of pkgDirs) {
      const rel = relative(repo, d);
      mkdirSync(join(stage, rel), { recursive: true });
      cpSync(join(d, 'package.json'), join(stage, rel, 'package.json'));
      cpSync(join(d, 'dist'), join(stage, rel, 'dist'), {
        recursive: true,
        filter: (src) => statSync(src).isDirectory() || !/\.(map|d\.ts)$/.test(src),
      });
    }
    let files = 0;
    for (const rel of closure()) {
      const src = join(repo, rel);
      mkdirSync(dirname(join(stage, rel)), { recursive: true });
      if (lstatSync(src).isSymbolicLink()) symlinkSync(readlinkSync(src), join(stage, rel));
      else cpSync(src, join(stage, rel), { recursive: true });
      files++;
    }
    const after = hashDist();
    if (before !== after) {
      process.stderr.write(`snapshot-build: dist/ changed while copying (attempt ${attempt}); again\n`);
      spawnSync('sleep', ['2']);
      continue;
    }
    mkdirSync(dirname(resolve(out)), { recursive: true });
    const r = spawnSync('tar', ['-C', stage, '-cf', resolve(out), '.'], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`tar exited ${r.status}`);
    const n = spawnSync('tar', ['-tf', resolve(out)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).length;
    process.stdout.write(`snapshot ${relative(repo, resolve(out))}: ${(statSync(resolve(out)).size / 1048576).toFixed(1)} MiB, ${n} entries, ${files} dependencies, dist ${before.slice(0, 12)}\n`);
    process.exit(0);
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
process.stderr.write('snapshot-build: dist/ kept changing (a build running?); giving up\n');
process.exit(1);
