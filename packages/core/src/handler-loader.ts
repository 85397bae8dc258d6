/**
 * Finding handlers: built-ins, a module file, or an npm package, and a
 * registry keyed by subtype that can scan a handler directory the way
 * tcmu-runner's --handler-path does.
 */
import { readdir, stat } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { splitCfgstring, configError, type ConfigCheck, type Handler } from './handler.js';

/**
 * Subtypes shipped in @tcmu-ts/handlers, by name: core cannot import that
 * package, so test/handler-loader.test.ts checks this list against its
 * `builtinHandlers` (a handler missing here is never served by the daemon).
 */
export const BUILTIN_HANDLERS: readonly string[] = Object.freeze(['ram', 'file', 'rbd', 'qcow', 'zbc', 'fbo', 'fault', 'glfs']);

// A variable, not a literal: core must not depend on handlers at build time
// (handlers depends on core), only find it at run time.
const HANDLERS_PACKAGE: string = '@tcmu-ts/handlers';

export class HandlerLoadError extends Error {
  constructor(
    readonly spec: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'HandlerLoadError';
  }
}

function typeOf(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

/**
 * Everything wrong with a would-be handler, as phrases for an error message.
 * Empty when it is usable.
 */
export function handlerProblems(value: unknown): string[] {
  if (typeof value !== 'object' || value === null) return [`expected an object, got ${typeOf(value)}`];
  const h = value as Record<string, unknown>;
  const problems: string[] = [];
  const str = (key: string, what: string) => {
    if (!(key in h)) problems.push(`missing ${key} (${what})`);
    else if (typeof h[key] !== 'string') problems.push(`${key} must be a string, got ${typeOf(h[key])}`);
  };
  const fn = (key: string, sig: string) => {
    if (!(key in h)) problems.push(`missing ${key}${sig} method`);
    else if (typeof h[key] !== 'function') problems.push(`${key} must be a function${sig}, got ${typeOf(h[key])}`);
  };
  str('name', 'human-friendly name');
  str('subtype', 'cfgstring prefix, e.g. "file"');
  if (typeof h.subtype === 'string' && (h.subtype === '' || h.subtype.includes('/'))) {
    problems.push(`subtype "${h.subtype}" must be non-empty and contain no '/'`);
  }
  str('configDescription', 'what the cfgstring should contain');
  fn('checkConfig', '(cfgstring)');
  fn('open', '(dev, reopen)');
  if (h.nrThreads !== undefined && !(Number.isInteger(h.nrThreads) && (h.nrThreads as number) >= 0)) {
    problems.push(`nrThreads must be a non-negative integer, got ${String(h.nrThreads)}`);
  }
  return problems;
}

/** Throw a HandlerLoadError naming everything missing, or return the value typed. */
export function validateHandler(value: unknown, source: string): Handler {
  const problems = handlerProblems(value);
  if (problems.length > 0) {
    throw new HandlerLoadError(source, `handler from ${source} is not a valid handler: ${problems.join('; ')}`);
  }
  return value as Handler;
}

/**
 * Pick the handler out of a module namespace: `default` or `handler`. A
 * CommonJS module arrives as { default: module.exports }, so one level of
 * nesting under default is looked through as well.
 */
export function handlerFromModule(mod: Record<string, unknown>, source: string): Handler {
  let candidate: unknown = mod.default ?? mod.handler;
  if (
    candidate !== undefined &&
    typeof candidate === 'object' &&
    candidate !== null &&
    handlerProblems(candidate).length > 0
  ) {
    const inner = candidate as Record<string, unknown>;
    if (inner.handler !== undefined) candidate = inner.handler;
    else if (inner.default !== undefined) candidate = inner.default;
  }
  if (candidate === undefined) {
    const names = Object.keys(mod);
    throw new HandlerLoadError(
      source,
      `handler module ${source} exports neither "default" nor "handler"` +
        (names.length ? ` (it exports: ${names.join(', ')})` : ' (it exports nothing)'),
    );
  }
  return validateHandler(candidate, source);
}

function looksLikePath(spec: string): boolean {
  return (
    path.isAbsolute(spec) ||
    spec.startsWith('./') ||
    spec.startsWith('../') ||
    spec === '.' ||
    spec === '..' ||
    spec.startsWith('file:') ||
    /\.(m|c)?js$/.test(spec)
  );
}

async function importOrExplain(specifier: string, spec: string, source: string): Promise<Record<string, unknown>> {
  try {
    return (await import(specifier)) as Record<string, unknown>;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') {
      throw new HandlerLoadError(spec, `cannot load handler ${source}: ${(e as Error).message}`, { cause: e });
    }
    throw new HandlerLoadError(
      spec,
      `handler module ${source} failed while loading: ${e instanceof Error ? e.message : String(e)}`,
      { cause: e },
    );
  }
}

export interface LoadHandlerOptions {
  /** Where relative paths and package names are resolved from (default: process.cwd()). */
  cwd?: string;
}

/**
 * Load a handler from a built-in subtype ("ram", "file"), a module path
 * ("./my-handler.js", "/opt/handlers/handler_x.mjs") or an npm package name
 * ("tcmu-handler-foo", "@org/handler"). The module must export the handler
 * as `default` or as `handler`.
 */
export async function loadHandler(spec: string, opts: LoadHandlerOptions = {}): Promise<Handler> {
  const cwd = opts.cwd ?? process.cwd();
  if (spec.trim() === '') throw new HandlerLoadError(spec, 'empty handler spec');

  if (BUILTIN_HANDLERS.includes(spec)) {
    const mod = await importOrExplain(HANDLERS_PACKAGE, spec, `built-in "${spec}" (${HANDLERS_PACKAGE})`);
    const list = mod.builtinHandlers as readonly Handler[] | undefined;
    const h = list?.find((x) => x.subtype === spec);
    if (!h) throw new HandlerLoadError(spec, `${HANDLERS_PACKAGE} does not provide the built-in "${spec}" handler`);
    return validateHandler(h, `built-in "${spec}"`);
  }

  if (looksLikePath(spec)) {
    const file = spec.startsWith('file:') ? spec : path.resolve(cwd, spec);
    if (!spec.startsWith('file:') && !existsSync(file)) {
      throw new HandlerLoadError(spec, `cannot load handler "${spec}": no such file ${file}`);
    }
    const url = spec.startsWith('file:') ? spec : pathToFileURL(file).href;
    const source = `"${spec}"${file !== spec ? ` (${file})` : ''}`;
    return handlerFromModule(await importOrExplain(url, spec, source), source);
  }

  // A package name: prefer the one installed where the user runs us, then
  // fall back to our own resolution (ESM-only packages without a "require"
  // export condition cannot be resolved through require.resolve).
  const found = resolvePackageFrom(cwd, spec);
  const specifier = found ? pathToFileURL(found).href : spec;
  const source = `package "${spec}"`;
  let mod: Record<string, unknown>;
  try {
    mod = await importOrExplain(specifier, spec, source);
  } catch (e) {
    const code = ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    if (specifier === spec && code === 'ERR_MODULE_NOT_FOUND') {
      throw new HandlerLoadError(
        spec,
        `cannot load handler ${source}: it is not installed (looked from ${cwd} and from tcmu-ts itself); ` +
          `built-ins are ${BUILTIN_HANDLERS.join(', ')}, and paths must start with / ./ or ../`,
        { cause: e },
      );
    }
    throw e;
  }
  return handlerFromModule(mod, source);
}

export interface ScanResult {
  loaded: { path: string; handler: Handler }[];
  failed: { path: string; error: Error }[];
}

/**
 * The file a package directory's import() would load (`subpath` "" for the
 * package itself). require.resolve knows most layouts but refuses ESM-only
 * "exports" maps, so those are read here.
 */
function packageEntry(dir: string, subpath = ''): string {
  try {
    return createRequire(path.join(dir, 'noop.js')).resolve(subpath ? path.join(dir, subpath) : dir);
  } catch {
    /* fall through to reading package.json */
  }
  let pkg: { main?: string; exports?: unknown } = {};
  try {
    pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as typeof pkg;
  } catch {
    /* no or broken package.json: plain directory layout */
  }
  const key = subpath ? `./${subpath}` : '.';
  let entry: unknown = pkg.exports;
  if (entry && typeof entry === 'object' && !Array.isArray(entry)) {
    const map = entry as Record<string, unknown>;
    // Either a subpath map ({".": ...}) or the conditions for "." directly.
    if (Object.keys(map).some((k) => k.startsWith('.'))) entry = map[key];
    else if (subpath) entry = undefined;
  } else if (subpath) {
    entry = undefined;
  }
  while (entry && typeof entry === 'object') {
    const cond = entry as Record<string, unknown>;
    entry = cond.import ?? cond.node ?? cond.default;
  }
  if (typeof entry === 'string') return path.resolve(dir, entry);
  return path.resolve(dir, subpath || pkg.main || 'index.js');
}

/**
 * Find package `spec` ("name", "@scope/name", "name/sub") in the
 * node_modules directories from `cwd` upwards, as a user would expect for a
 * handler they installed next to their configuration.
 */
function resolvePackageFrom(cwd: string, spec: string): string | undefined {
  const parts = spec.split('/');
  const nameParts = spec.startsWith('@') ? 2 : 1;
  const name = parts.slice(0, nameParts).join('/');
  const subpath = parts.slice(nameParts).join('/');
  for (let d = path.resolve(cwd); ; d = path.dirname(d)) {
    const pkgDir = path.join(d, 'node_modules', name);
    if (existsSync(pkgDir)) return packageEntry(pkgDir, subpath);
    if (path.dirname(d) === d) return undefined;
  }
}

/** Handler files in a handler directory follow tcmu-runner's "handler_*" naming. */
const HANDLER_ENTRY = /^handler[_-].+/;
const MODULE_FILE = /\.(m|c)?js$/;

/** Handlers by subtype, as the engine dispatches cfgstrings to them. */
export class HandlerRegistry {
  private readonly handlers = new Map<string, Handler>();

  /** Add a handler. A second handler for the same subtype is an error unless `replace`. */
  register(handler: Handler, opts: { replace?: boolean } = {}): Handler {
    const h = validateHandler(handler, 'register()');
    const existing = this.handlers.get(h.subtype);
    if (existing && existing !== h && !opts.replace) {
      throw new HandlerLoadError(
        h.subtype,
        `a handler for subtype "${h.subtype}" is already registered ("${existing.name}")`,
      );
    }
    this.handlers.set(h.subtype, h);
    return h;
  }

  unregister(subtype: string): boolean {
    return this.handlers.delete(subtype);
  }

  get(subtype: string): Handler | undefined {
    return this.handlers.get(subtype);
  }

  has(subtype: string): boolean {
    return this.handlers.has(subtype);
  }

  get size(): number {
    return this.handlers.size;
  }

  list(): Handler[] {
    return [...this.handlers.values()];
  }

  /** The handler for a full cfgstring ("<subtype>/<config>") and the part it gets to see. */
  resolve(cfgstring: string): { handler: Handler; config: string } {
    const { subtype, config } = splitCfgstring(cfgstring);
    const handler = this.handlers.get(subtype);
    if (!handler) {
      const known = [...this.handlers.keys()];
      throw new HandlerLoadError(
        subtype,
        `no handler for subtype "${subtype}"` + (known.length ? ` (registered: ${known.join(', ')})` : ' (none registered)'),
      );
    }
    return { handler, config };
  }

  /** Run the right handler's checkConfig on a full cfgstring. */
  checkConfig(cfgstring: string): ConfigCheck {
    let r: { handler: Handler; config: string };
    try {
      r = this.resolve(cfgstring);
    } catch (e) {
      return configError((e as Error).message);
    }
    try {
      return r.handler.checkConfig(r.config);
    } catch (e) {
      return configError(`${r.handler.subtype}: checkConfig failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** checkConfig, then the handler's probeConfig when it has one: the whole verdict on a cfgstring. */
  async probeConfig(cfgstring: string): Promise<ConfigCheck> {
    const syntax = this.checkConfig(cfgstring);
    if (!syntax.ok) return syntax;
    const r = this.resolve(cfgstring);
    return probeConfig(r.handler, r.config);
  }

  async load(spec: string, opts: LoadHandlerOptions & { replace?: boolean } = {}): Promise<Handler> {
    return this.register(await loadHandler(spec, opts), opts);
  }

  async loadBuiltins(): Promise<Handler[]> {
    const out: Handler[] = [];
    for (const s of BUILTIN_HANDLERS) out.push(await this.load(s, { replace: true }));
    return out;
  }

  /**
   * Load every handler_* module (or handler_* package directory) in `dir`.
   * A broken handler is reported in `failed` and does not stop the others,
   * as tcmu-runner keeps going past a handler that fails to load.
   */
  async scan(dir: string): Promise<ScanResult> {
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch (e) {
      throw new HandlerLoadError(dir, `cannot scan handler directory ${dir}: ${(e as Error).message}`, { cause: e });
    }
    const result: ScanResult = { loaded: [], failed: [] };
    for (const name of names) {
      if (!HANDLER_ENTRY.test(name)) continue;
      const full = path.resolve(dir, name);
      let target = full;
      try {
        const st = await stat(full);
        if (st.isDirectory()) {
          // A package directory: import() needs the entry file, which the package's own resolution knows.
          if (!existsSync(path.join(full, 'package.json'))) continue;
          target = packageEntry(full);
        } else if (!MODULE_FILE.test(name)) {
          continue;
        }
        const handler = await loadHandler(target);
        this.register(handler);
        result.loaded.push({ path: full, handler });
      } catch (e) {
        result.failed.push({ path: full, error: e instanceof Error ? e : new Error(String(e)) });
      }
    }
    return result;
  }
}

/** A handler's checkConfig and then its probeConfig (when it has one), failures turned into verdicts. */
export async function probeConfig(handler: Handler, config: string): Promise<ConfigCheck> {
  try {
    const syntax = handler.checkConfig(config);
    if (!syntax.ok || !handler.probeConfig) return syntax;
    return await handler.probeConfig(config);
  } catch (e) {
    return configError(`${handler.subtype}: checkConfig failed: ${e instanceof Error ? e.message : String(e)}`);
  }
}
