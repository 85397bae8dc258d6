/**
 * Reading /etc/tcmu/tcmu.conf and following its changes; the syntax and the
 * precedence of the sources are in control/config.ts.
 *
 * One difference: tcmu-runner refuses to start when tcmu.conf cannot be
 * opened; we treat a missing file as empty (`missing: true`).
 */
import { readFile, stat } from 'node:fs/promises';
import { watch, type FSWatcher } from 'node:fs';
import { EventEmitter } from 'node:events';
import { basename, dirname } from 'node:path';
import {
  type ConfPathOptions, type ResolvedTcmuConfig, type TcmuCliOptions, type TcmuConfFile, parseTcmuConf, resolveTcmuConfig,
  tcmuConfPath,
} from '../control/config.js';

/** tcmu-runner reads at most this much of the file. */
export const TCMU_CONF_MAX_BYTES = 2 * 1024 * 1024;

export interface LoadedTcmuConf extends TcmuConfFile {
  path: string;
  /** The file did not exist (treated as empty). */
  missing: boolean;
}

/** Read and parse the file; a missing file is empty, an over-size one an error. */
export async function loadTcmuConf(opts: ConfPathOptions = {}): Promise<LoadedTcmuConf> {
  const path = tcmuConfPath(opts);
  let text: string;
  try {
    const st = await stat(path);
    if (st.size > TCMU_CONF_MAX_BYTES) {
      return { path, missing: false, extra: {}, warnings: [], errors: [{ line: 0, message: `file larger than ${TCMU_CONF_MAX_BYTES} bytes`, text: '' }] };
    }
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { path, missing: true, extra: {}, errors: [], warnings: [] };
    throw e;
  }
  return { path, missing: false, ...parseTcmuConf(text) };
}

export interface TcmuConfReload {
  config: ResolvedTcmuConfig;
  previous: ResolvedTcmuConfig | null;
  /** logLevel or logDir differ from the previous configuration. */
  changed: boolean;
  file: LoadedTcmuConf;
}

export interface TcmuConfWatcherOptions extends ConfPathOptions {
  cli?: TcmuCliOptions;
  env?: Record<string, string | undefined>;
  /** Quiet time after the last change before re-reading (editors write in bursts). Default 100 ms. */
  debounceMs?: number;
}

/**
 * Loads tcmu.conf and re-reads it whenever something in its directory
 * changes (the directory is watched, not the file, so editors that save by
 * rename are seen: tcmu-runner watches the directory for the same reason).
 *
 * Events: 'reload' (TcmuConfReload) after every read, including the first;
 * 'warning' (Error) when the directory cannot be watched or a re-read fails.
 */
export class TcmuConfWatcher extends EventEmitter {
  current: ResolvedTcmuConfig | null = null;
  watching = false;
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private reading: Promise<TcmuConfReload> | null = null;
  private again = false;
  readonly path: string;

  constructor(private readonly opts: TcmuConfWatcherOptions = {}) {
    super();
    this.path = tcmuConfPath(opts);
  }

  /** Read the file once and start watching. Resolves with the first reload. */
  async start(): Promise<TcmuConfReload> {
    const first = await this.reload();
    if (this.closed) return first;
    try {
      this.watcher = watch(dirname(this.path), { persistent: false }, (_event, filename) => {
        if (filename !== null && filename !== basename(this.path)) return;
        this.schedule();
      });
      this.watcher.on('error', (e) => this.emit('warning', e));
      this.watching = true;
    } catch (e) {
      this.emit('warning', new Error(`cannot watch ${dirname(this.path)} for config changes: ${(e as Error).message}`));
    }
    return first;
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.reload().catch((e) => this.emit('warning', e));
    }, this.opts.debounceMs ?? 100);
  }

  /** Re-read now (e.g. on SIGHUP). Concurrent calls are coalesced. */
  reload(): Promise<TcmuConfReload> {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = (async () => {
      try {
        let r: TcmuConfReload;
        do {
          this.again = false;
          const file = await loadTcmuConf(this.opts);
          const config = resolveTcmuConfig({ file, cli: this.opts.cli, env: this.opts.env ?? process.env });
          const previous = this.current;
          const changed = previous === null || previous.logLevel !== config.logLevel || previous.logDir !== config.logDir;
          this.current = config;
          r = { config, previous, changed, file };
          if (!this.closed) this.emit('reload', r);
        } while (this.again && !this.closed);
        return r;
      } finally {
        this.reading = null;
      }
    })();
    return this.reading;
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.watcher?.close();
    this.watcher = null;
    this.watching = false;
  }
}
