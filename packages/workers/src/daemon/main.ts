/**
 * `tcmu-ts` serving a real kernel: configuration and logging as tcmu-runner
 * does them, handlers (built-in plus --handler-path), the Daemon, and the
 * signals a service manager sends.
 */
import { HandlerRegistry, TcmuNotLoadedError, formatConfIssue, type TcmuCliOptions } from '@tcmu-ts/core';
import { Logger, TcmuConfWatcher } from '@tcmu-ts/core/host';
import { Daemon, type DaemonOptions } from './daemon.js';
import { AnotherDaemonError } from './exclusive.js';

export interface DaemonMainOptions {
  cli: TcmuCliOptions;
  handlerPath?: string;
  /** tcmu.conf location; /etc/tcmu/tcmu.conf by default. */
  configPath?: string;
  /** Called once the daemon serves, with what the optional services need. */
  /** Tests: a stand-in kernel (root, netlink, UIO) and where log lines go besides the log file. */
  daemonOptions?: Partial<Omit<DaemonOptions, 'logger' | 'registry' | 'handlerSources'>>;
  stderr?: { write(line: string): unknown };
  onStarted?: (daemon: Daemon, registry: HandlerRegistry, logger: Logger) => Promise<(() => Promise<void>) | void>;
}

export async function runDaemon(o: DaemonMainOptions): Promise<number> {
  const watcher = new TcmuConfWatcher({ path: o.configPath, cli: o.cli, env: process.env });
  const first = await watcher.start();
  const logger = new Logger({ level: first.config.logLevel, logDir: first.config.logDir, ...(o.stderr ? { stderr: o.stderr } : {}) });
  for (const e of first.file.errors) logger.warn(formatConfIssue(e, first.file.path));
  for (const w of first.file.warnings) logger.warn(formatConfIssue(w, first.file.path));
  let daemon: Daemon | undefined;
  watcher.on('reload', (r) => {
    if (!r.changed) return;
    logger.setLevel(r.config.logLevel);
    daemon?.supervisor.setLogCdbs(r.config.logLevel >= 5);
    logger.setLogDir(r.config.logDir);
    logger.info(`configuration reloaded from ${r.file.path}: log_level ${r.config.logLevel}, log_dir ${r.config.logDir}`);
  });
  watcher.on('warning', (e: Error) => logger.warn(e.message));

  const registry = new HandlerRegistry();
  const sources = new Map<string, string>();
  for (const h of await registry.loadBuiltins()) sources.set(h.subtype, h.subtype);
  if (o.handlerPath) {
    const scan = await registry.scan(o.handlerPath);
    for (const l of scan.loaded) sources.set(l.handler.subtype, l.path);
    for (const f of scan.failed) logger.error(`handler ${f.path}: ${f.error.message}`);
  }
  logger.info(`handlers: ${[...sources.keys()].join(', ')}`);

  daemon = new Daemon({ ...o.daemonOptions, logger, registry, handlerSources: sources });
  try {
    await daemon.start();
  } catch (e) {
    if (e instanceof TcmuNotLoadedError || e instanceof AnotherDaemonError) logger.crit(`${e.message}`);
    else logger.crit(`cannot start: ${e instanceof Error ? e.message : String(e)}`);
    await watcher.close();
    logger.close();
    return e instanceof AnotherDaemonError ? e.exitCode : 1;
  }
  const stopServices = await o.onStarted?.(daemon, registry, logger);
  logger.info(`serving ${daemon.devices.size} device(s); SIGTERM stops, SIGHUP reloads ${watcher.path}`);

  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      logger.info(`${sig}: finishing commands in flight and closing handlers`);
      resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => void watcher.reload());
  });
  await stopServices?.();
  await daemon.stop();
  await watcher.close();
  logger.info('stopped');
  logger.close();
  return 0;
}
