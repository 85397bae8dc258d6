#!/usr/bin/env node
// The same CDBs sent to tcmu-runner's and to tcmu-ts's zbc / fbo LUNs, the
// answers compared field by field.
//
//   node scsi-compare.mjs probe <zbc|fbo> /dev/sgN <out.json> [--resume]
//        send every step of the set in order, keep status, sense and data; stop (exit 3)
//        at a step that gets no answer; --resume sends only the steps not yet in out.json
//   node scsi-compare.mjs diff <zbc|fbo> <tcmu-runner.json> <tcmu-ts.json> <out.tsv>
//        decode both into named fields; a field that differs must be listed in
//        EXPLAINED (with the docs/SCSI.md section that says why), else the diff fails
//
// The steps assume the configuration the scenario gives both daemons:
//   zbc/model-HM/zsize-1/conv-2/open-4@<file>, 512-byte blocks, 16 MiB (16 zones of
//   2048 blocks: 2 conventional, 14 sequential write required), hw_max_sectors 128;
//   fbo/<copy of one ISO9660 image>, 2048-byte blocks.
import { readFileSync, writeFileSync } from 'node:fs';
import { SETS, compare, hex } from './scsi-compare-sets.mjs';

export { SETS, EXPLAINED, DECODERS, fieldsOf, compare } from './scsi-compare-sets.mjs';

// ---------------------------------------------------------------- commands
/** An answer that never came: SG_IO timed out (host status DID_TIME_OUT) or the ioctl failed. */
const unanswered = (r) => r.error !== undefined || r.hostStatus === 3;

/**
 * Send the set's steps in order. With `resume`, steps already in outPath are kept and not
 * sent again (a step that got no answer counts as sent: it is not retried). Stops at the
 * first step that gets no answer, since a daemon that dropped one command may drop every
 * later one (tcmu-runner 1.5.4's fbo spins forever on a VERIFY without data), and exits 3
 * so the scenario can restart the daemon and resume after that step.
 */
async function probe(set, devPath, outPath, resume = false) {
  let results = [];
  if (resume) try { results = JSON.parse(readFileSync(outPath, 'utf8')); } catch { /* nothing sent yet */ }
  const done = new Set(results.map((r) => r.id));
  const { SgDevice } = await import('./sg-io.mjs');
  const dev = new SgDevice(devPath);
  let silent;
  try {
    for (const step of SETS[set]) {
      if (done.has(step.id)) continue;
      let r;
      try {
        r = dev.run(Uint8Array.from(step.cdb), { dir: step.dir, length: step.length, data: step.data, timeoutMs: step.timeoutMs ?? 20000 });
        r = { status: r.status, sense: hex(r.sense), data: hex(r.data), resid: r.resid, hostStatus: r.hostStatus, driverStatus: r.driverStatus };
      } catch (e) {
        r = { error: e.message };
      }
      results.push({ id: step.id, cdb: hex(Uint8Array.from(step.cdb)), ...r });
      // written after every step: a daemon that stops answering still leaves what it said
      writeFileSync(outPath, JSON.stringify(results, null, 1));
      if (process.env.SCSI_COMPARE_VERBOSE) console.log(`  ${step.id}: ${r.error ?? `status ${r.status} host ${r.hostStatus}`}`);
      if (unanswered(r)) { silent = step.id; break; }
    }
  } finally {
    dev.close();
  }
  const left = SETS[set].length - results.length;
  console.log(`${set}: ${results.length} steps sent to ${devPath}, ${results.filter((r) => r.status === 0).length} GOOD, ${results.filter(unanswered).length} unanswered` +
    (silent ? `; stopped at ${silent}, which got no answer (${left} steps not sent)` : ''));
  if (silent && left > 0) process.exitCode = 3;
}

function diff(set, theirsPath, oursPath, tsvPath) {
  const c = compare(set, JSON.parse(readFileSync(theirsPath, 'utf8')), JSON.parse(readFileSync(oursPath, 'utf8')));
  const flat = (s) => String(s).replace(/[\t\n]/g, ' ');
  writeFileSync(tsvPath, ['step\twhat\tfield\ttcmu-runner\ttcmu-ts\tverdict\twhy',
    ...c.rows.map((r) => [r.step, r.what, r.field, r.theirs, r.ours, r.verdict, r.why].map(flat).join('\t'))].join('\n') + '\n');
  console.log(`${set}: ${c.rows.length} fields in ${SETS[set].length} steps: ${c.same} the same, ${c.explained} different and explained, ${c.unexplained.length} different and unexplained`);
  for (const r of c.unexplained) console.log(`  UNEXPLAINED ${r.step} / ${r.field}: tcmu-runner ${r.theirs} | tcmu-ts ${r.ours}`);
  for (const k of c.stale) console.log(`  stale explanation (no longer differs): ${k}`);
  process.exitCode = c.unexplained.length ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [cmd, set, ...rest] = process.argv.slice(2);
  const resume = rest[2] === '--resume';
  if (!SETS[set] || !((cmd === 'probe' && (rest.length === 2 || (rest.length === 3 && resume))) || (cmd === 'diff' && rest.length === 3))) {
    console.error('usage: scsi-compare.mjs probe <zbc|fbo> /dev/sgN out.json [--resume] | diff <zbc|fbo> tcmu-runner.json tcmu-ts.json out.tsv');
    process.exit(2);
  }
  if (cmd === 'probe') await probe(set, rest[0], rest[1], resume);
  else diff(set, ...rest);
}
