#!/usr/bin/env node
import '../threadpool.js';
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { runDemo } from '../demo/demo.js';
import { runDaemon } from '../daemon/main.js';
import { ADMIN_HELP, parseArgsMessage, runAdmin, ADMIN_COMMANDS } from './admin.js';
import { startDbusService, DbusServiceError } from '../dbus/service.js';
import { startMetricsServer, parseMetricsAddress } from '../metrics.js';

const HELP = `tcmu-ts: userspace daemon for the Linux LIO TCM-User (TCMU) backstore

Usage: tcmu-ts [options]

With the target_core_user kernel module loaded, tcmu-ts serves the user
backstores the kernel offers (as tcmu-runner does): it adopts the devices
already present, follows the kernel's netlink events, and answers each
device's command ring on a thread of its own. Without the module (or with
--simulate) it starts its own kernel simulator, serves simulated LUNs under
a built-in verifying load and prints live figures once a second.

Options (tcmu-runner's):
  -h, --help              show this help and exit
  -V, --version           print the version and exit
  -d, --debug             log level 5 (every SCSI command), unless tcmu.conf sets log_level
      --handler-path <d>  also load handler_* modules from this directory
  -l, --tcmu-log-dir <d>  log directory (tcmu.conf's log_dir wins; then $TCMU_LOGDIR; default /var/log)
Options (tcmu-ts):
      --config <file>     tcmu.conf to read and watch (default /etc/tcmu/tcmu.conf); SIGHUP re-reads it
      --no-dbus           do not own org.kernel.TCMUService1 on the system bus
                          (honours DBUS_SYSTEM_BUS_ADDRESS)
      --metrics-address <host:port>
                          serve Prometheus /metrics there (default 127.0.0.1:9560)
      --no-metrics        no /metrics endpoint
      --isolate-process   run each device's worker in a child process instead of a
                          thread: a native crash in a handler (abort(), SIGSEGV in a
                          C library) then ends that device's worker only, which is
                          restarted on a reset ring; costs a process per device
Simulated mode:
      --simulate          use the built-in kernel simulator even if TCMU exists
      --duration <s>      stop after this many seconds (default: until Ctrl-C)
      --queue-depth <n>   commands in flight per simulated LUN (default 16)
      --io-size <bytes>   bytes per READ/WRITE of the built-in load (default 4096)
      --read-percent <p>  share of reads in the built-in load, 0-100 (default 50)
      --lun-size-mb <n>   size of each simulated LUN in MiB (default 64)
      --no-load           serve the simulated LUNs without the built-in load

${ADMIN_HELP}
Exit status:
  0   stopped by SIGTERM/SIGINT (or --help, --version)
  1   could not start or serve (the log's last line says why); a simulated
      run with errors or verify failures
  2   bad command line
  3   another TCMU daemon (tcmu-ts or tcmu-runner) serves this kernel: it
      holds /run/tcmu.lock or has a /dev/uioN open; nothing was touched

The last line of a simulated run is
  summary: <n> commands, <x> IOPS, <e> errors, <v> verify failures
and the exit status is 1 when there were errors or verify failures.
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

class UsageError extends Error {}

/** A number option in [min, max] (whole when `integer`), or the default. */
function num(name: string, v: string | undefined, dflt: number, min: number, max: number, integer = true): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new UsageError(`--${name} must be ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}, got '${v}'`);
  }
  return n;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv.length && ADMIN_COMMANDS.includes(argv[0])) {
    return runAdmin(argv, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) });
  }
  let args;
  try {
    args = parseArgs({
      options: {
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'V' },
        debug: { type: 'boolean', short: 'd' },
        'handler-path': { type: 'string' },
        'tcmu-log-dir': { type: 'string', short: 'l' },
        config: { type: 'string' },
        'no-dbus': { type: 'boolean' },
        'metrics-address': { type: 'string' },
        'no-metrics': { type: 'boolean' },
        'isolate-process': { type: 'boolean' },
        simulate: { type: 'boolean' },
        demo: { type: 'boolean' },
        duration: { type: 'string' },
        'queue-depth': { type: 'string' },
        'io-size': { type: 'string' },
        'read-percent': { type: 'string' },
        'lun-size-mb': { type: 'string' },
        'no-load': { type: 'boolean' },
      },
      allowPositionals: false,
    }).values;
  } catch (e) {
    process.stderr.write(`tcmu-ts: ${parseArgsMessage(e as Error)}\nTry 'tcmu-ts --help'.\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (args.version) {
    process.stdout.write(`tcmu-ts ${version()}\n`);
    return 0;
  }
  const metricsAddress = args['no-metrics'] ? null : (args['metrics-address'] ?? '127.0.0.1:9560');
  if (metricsAddress) {
    try {
      parseMetricsAddress(metricsAddress);
    } catch (e) {
      process.stderr.write(`tcmu-ts: ${(e as Error).message}\n`);
      return 2;
    }
  }
  const isolation = args['isolate-process'] ? 'process' as const : 'thread' as const;
  let demo;
  try {
    const ioBytes = num('io-size', args['io-size'], 4096, 512, 8 << 20);
    if (ioBytes % 512 !== 0) throw new UsageError(`--io-size must be a multiple of 512, got '${args['io-size']}'`);
    demo = {
      isolation,
      durationS: args.duration === undefined ? undefined : num('duration', args.duration, 0, 0.001, 1e9, false),
      queueDepth: num('queue-depth', args['queue-depth'], 16, 1, 1024),
      ioBytes,
      readPercent: num('read-percent', args['read-percent'], 50, 0, 100, false),
      lunSizeMb: num('lun-size-mb', args['lun-size-mb'], 64, 1, 1 << 20),
      load: !args['no-load'],
    };
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`tcmu-ts: ${e.message}\nTry 'tcmu-ts --help'.\n`);
    return 2;
  }
  const haveTcmu = existsSync('/sys/module/target_core_user');
  if (haveTcmu && !args.simulate && !args.demo) {
    return runDaemon({
      cli: { debug: args.debug, logDir: args['tcmu-log-dir'] },
      handlerPath: args['handler-path'],
      configPath: args.config,
      daemonOptions: { isolation },
      onStarted: async (daemon, registry, logger) => {
        const stops: (() => Promise<void>)[] = [];
        if (metricsAddress) {
          try {
            const metrics = await startMetricsServer(daemon.supervisor, parseMetricsAddress(metricsAddress));
            daemon.onNetlinkEvent = (kind) => metrics.incNetlinkEvents(kind);
            logger.info(`metrics: ${metrics.url}`);
            stops.push(() => metrics.close());
          } catch (e) {
            logger.error(`no /metrics endpoint: ${e instanceof Error ? e.message : String(e)}`);
          }
        }
        if (!args['no-dbus']) {
          try {
            const dbus = await startDbusService({
              registry,
              log: (level, msg) => logger[level](`dbus: ${msg}`),
              onExternalHandler: (e) => logger.info(`dbus: handler "${e.handler.subtype}" ${e.kind === 'added' ? `registered by ${e.handler.owner}; its devices are left to that process` : `removed (${e.reason})`}`),
              onDisconnected: (err) => logger.error(`dbus: lost the system bus${err ? `: ${err.message}` : ''}`),
            });
            stops.push(() => dbus.close());
          } catch (e) {
            if (!(e instanceof DbusServiceError)) throw e;
            // As tcmu-runner: devices are still served without DBus; only targetcli's checks are lost.
            logger.error(e.message);
          }
        }
        return async () => {
          for (const stop of stops.reverse()) await stop();
        };
      },
    });
  }
  if (!haveTcmu) process.stderr.write('tcmu-ts: target_core_user is not loaded here: serving simulated LUNs (see --help)\n');
  return runDemo({
    ...demo,
    metricsAddress,
  });
}

main().then((code) => process.exit(code), (e) => {
  process.stderr.write(`tcmu-ts: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
