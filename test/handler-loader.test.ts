import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BUILTIN_HANDLERS, HandlerLoadError, HandlerRegistry, loadHandler, validateHandler, type Handler } from '@tcmu-ts/core';
import { builtinHandlers, fileHandler, ramHandler } from '@tcmu-ts/handlers';

/** A self-contained handler module body (no imports, so it loads from any directory). */
function handlerSource(subtype: string, exportAs: 'default' | 'handler' | 'cjs' = 'default'): string {
  const obj = `{
    name: 'Test ${subtype}',
    subtype: '${subtype}',
    configDescription: 'anything',
    checkConfig: (c) => (c === 'bad' ? { ok: false, reason: 'bad config' } : { ok: true }),
    open: async () => ({ close: async () => {} }),
  }`;
  if (exportAs === 'cjs') return `module.exports = { handler: ${obj} };\n`;
  return exportAs === 'default' ? `export default ${obj};\n` : `export const handler = ${obj};\n`;
}

async function loadError(spec: string, opts?: { cwd?: string }): Promise<HandlerLoadError> {
  try {
    await loadHandler(spec, opts);
  } catch (e) {
    expect(e).to.be.instanceOf(HandlerLoadError);
    return e as HandlerLoadError;
  }
  throw new Error(`loadHandler(${spec}) should have failed`);
}

describe('handler loader', () => {
  let dir: string;
  let n = 0;
  /** A fresh file name each time: ESM caches modules by URL. */
  function write(name: string, body: string): string {
    const p = path.join(dir, `${n++}-${name}`);
    fs.writeFileSync(p, body);
    return p;
  }

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-loader-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('loads the built-ins by subtype', async () => {
    expect(await loadHandler('ram')).to.equal(ramHandler);
    expect(await loadHandler('file')).to.equal(fileHandler);
  });

  it('loads a module by absolute and relative path, as default or handler export, ESM or CommonJS', async () => {
    const a = await loadHandler(write('a.mjs', handlerSource('alpha')));
    expect(a.subtype).to.equal('alpha');
    const b = write('b.mjs', handlerSource('beta', 'handler'));
    expect((await loadHandler(`./${path.basename(b)}`, { cwd: dir })).subtype).to.equal('beta');
    const c = await loadHandler(write('c.cjs', handlerSource('gamma', 'cjs')));
    expect(c.subtype).to.equal('gamma');
    expect(c.checkConfig('bad')).to.deep.equal({ ok: false, reason: 'bad config' });
  });

  it('loads an installed package by name', async () => {
    const pkg = path.join(dir, 'node_modules', 'tcmu-handler-delta');
    fs.mkdirSync(pkg, { recursive: true });
    fs.writeFileSync(
      path.join(pkg, 'package.json'),
      JSON.stringify({ name: 'tcmu-handler-delta', type: 'module', exports: { '.': { import: './main.js' } } }),
    );
    fs.writeFileSync(path.join(pkg, 'main.js'), handlerSource('delta'));
    expect((await loadHandler('tcmu-handler-delta', { cwd: dir })).subtype).to.equal('delta');
  });

  it('names everything missing from a bad handler', async () => {
    const p = write('bad.mjs', `export default { name: 'half', subtype: 'a/b', open: 42 };\n`);
    const err = await loadError(p);
    expect(err.message).to.include(p);
    expect(err.message).to.include('is not a valid handler');
    expect(err.message).to.include('missing configDescription');
    expect(err.message).to.include('missing checkConfig(cfgstring) method');
    expect(err.message).to.include('open must be a function(dev, reopen), got number');
    expect(err.message).to.include(`subtype "a/b" must be non-empty and contain no '/'`);
  });

  it('explains a module without a default or handler export', async () => {
    const err = await loadError(write('none.mjs', 'export const ram = 1; export function open() {}\n'));
    expect(err.message).to.match(/exports neither "default" nor "handler" \(it exports: open, ram\)/);
  });

  it('explains missing files, unknown packages and modules that throw while loading', async () => {
    expect((await loadError('./nope.mjs', { cwd: dir })).message).to.equal(
      `cannot load handler "./nope.mjs": no such file ${path.join(dir, 'nope.mjs')}`,
    );
    expect((await loadError('tcmu-no-such-handler', { cwd: dir })).message).to.match(
      /package "tcmu-no-such-handler": it is not installed/,
    );
    const boom = await loadError(write('boom.mjs', `throw new Error('kaboom');\n`));
    expect(boom.message).to.match(/failed while loading: kaboom/);
    expect((boom.cause as Error).message).to.equal('kaboom');
  });

  it('validateHandler accepts the built-ins and rejects non-objects', () => {
    expect(validateHandler(ramHandler, 'x')).to.equal(ramHandler);
    expect(() => validateHandler(null, 'somewhere')).to.throw(/somewhere is not a valid handler: expected an object, got null/);
    expect(() => validateHandler({ ...ramHandler, nrThreads: -1 }, 'x')).to.throw(/nrThreads must be a non-negative integer/);
  });
});

describe('handler registry', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-registry-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('loads every handler @tcmu-ts/handlers ships as a built-in (the daemon serves only these)', async () => {
    expect([...BUILTIN_HANDLERS].sort()).to.deep.equal(builtinHandlers.map((h) => h.subtype).sort());
    const reg = new HandlerRegistry();
    await reg.loadBuiltins();
    for (const h of builtinHandlers) expect(reg.resolve(`${h.subtype}/x`).handler, h.subtype).to.equal(h);
  });

  it('dispatches full cfgstrings to the handler of their subtype', async () => {
    const reg = new HandlerRegistry();
    await reg.loadBuiltins();
    expect(reg.list().map((h) => h.subtype)).to.deep.equal([...BUILTIN_HANDLERS]);
    const { handler, config } = reg.resolve('file//var/lib/disk.img');
    expect(handler).to.equal(fileHandler);
    expect(config).to.equal('/var/lib/disk.img');
    expect(reg.checkConfig('ram/1G')).to.deep.equal({ ok: true });
    expect(reg.checkConfig('ram/x;chunk=3')).to.have.property('ok', false);
    expect(reg.checkConfig('nope/pool/img')).to.deep.equal({
      ok: false,
      reason: `no handler for subtype "nope" (registered: ${BUILTIN_HANDLERS.join(', ')})`,
    });
  });

  it('refuses a second handler for a subtype unless asked to replace it', () => {
    const reg = new HandlerRegistry();
    reg.register(ramHandler);
    const other: Handler = { ...ramHandler, name: 'Other RAM' };
    expect(() => reg.register(other)).to.throw(/subtype "ram" is already registered \("Sparse RAM handler"\)/);
    reg.register(other, { replace: true });
    expect(reg.get('ram')).to.equal(other);
    expect(reg.unregister('ram')).to.equal(true);
    expect(reg.size).to.equal(0);
  });

  it('scans a handler directory: handler_* modules and packages load, broken ones are reported, others ignored', async () => {
    fs.writeFileSync(path.join(dir, 'handler_one.mjs'), handlerSource('one'));
    fs.writeFileSync(path.join(dir, 'handler_broken.mjs'), 'export default { name: "broken" };\n');
    fs.writeFileSync(path.join(dir, 'helper.mjs'), 'throw new Error("must not be loaded");\n');
    fs.writeFileSync(path.join(dir, 'handler_notes.txt'), 'not a module');
    const pkg = path.join(dir, 'handler_two');
    fs.mkdirSync(pkg);
    fs.writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ type: 'module', exports: './index.js' }));
    fs.writeFileSync(path.join(pkg, 'index.js'), handlerSource('two', 'handler'));

    const reg = new HandlerRegistry();
    const res = await reg.scan(dir);
    expect(res.loaded.map((l) => l.handler.subtype)).to.deep.equal(['one', 'two']);
    expect(res.failed).to.have.length(1);
    expect(res.failed[0].path).to.equal(path.join(dir, 'handler_broken.mjs'));
    expect(res.failed[0].error.message).to.include('missing subtype');
    expect(reg.has('one') && reg.has('two')).to.equal(true);
  });

  it('reports a handler directory that does not exist', async () => {
    const missing = path.join(dir, 'nowhere');
    let err: unknown;
    try {
      await new HandlerRegistry().scan(missing);
    } catch (e) {
      err = e;
    }
    expect((err as Error).message).to.match(new RegExp(`cannot scan handler directory ${missing}: ENOENT`));
  });
});
