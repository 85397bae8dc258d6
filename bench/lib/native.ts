/**
 * The native consumer (bench/native/consumer.c): built with cc at bench time,
 * one child process per LUN, given the simulator's memfd and event socket as
 * inherited fds 3 and 4.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { UioEndpoint } from '@tcmu-ts/ring';

const HERE = dirname(fileURLToPath(import.meta.url)); // bench/dist/lib
export const BENCH_DIR = join(HERE, '..', '..');
const SOURCE = join(BENCH_DIR, 'native', 'consumer.c');
const BINARY = join(BENCH_DIR, 'dist', 'native', 'consumer');

/** Compile the consumer if the binary is missing or older than its source. Returns the binary path and the compiler used. */
export function buildNative(): { path: string; cc: string } {
  const cc = process.env.CC ?? 'cc';
  if (existsSync(BINARY) && statSync(BINARY).mtimeMs >= statSync(SOURCE).mtimeMs) return { path: BINARY, cc };
  mkdirSync(dirname(BINARY), { recursive: true });
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-o', BINARY, SOURCE], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the native consumer with ${cc} failed:\n${r.stderr || r.error?.message}`);
  return { path: BINARY, cc };
}

export interface NativeStats {
  commands: number;
  bytes: number;
  errors: number;
  passes: number;
  kicks: number;
  wakeups: number;
  maxBatch: number;
  cpuUserS: number;
  cpuSysS: number;
}

export interface NativeConsumer {
  readonly child: ChildProcess;
  /** SIGTERM, then the counters it prints on the way out. */
  stop(): Promise<NativeStats>;
}

export interface NativeOptions {
  lunBytes: number;
  blockSize: number;
  /** No data copies: only the ring protocol. */
  null?: boolean;
  kickEach?: boolean;
  /** Back the LUN with this file (pread/pwrite) instead of RAM. */
  file?: string;
}

export function startNative(bin: string, ep: UioEndpoint, o: NativeOptions): NativeConsumer {
  const args = [
    ...(o.null ? ['--null'] : []), ...(o.kickEach ? ['--kick-each'] : []), ...(o.file ? ['--file', o.file] : []),
    String(ep.mapSize), String(o.lunBytes), String(o.blockSize),
  ];
  // Integers in stdio are fds of ours that the child gets at that index (dup2, so close-on-exec is dropped).
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit', ep.mapFd, ep.eventFd] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  // 'close' comes after 'exit' once stdout has been read to its end: the counters line is complete then.
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return {
    child,
    async stop(): Promise<NativeStats> {
      child.kill('SIGTERM');
      const code = await exited;
      if (code !== 0) throw new Error(`native consumer exited with ${code}`);
      return JSON.parse(out.trim().split('\n').pop()!) as NativeStats;
    },
  };
}

/** Single-thread memcpy bandwidth, from the native program (GB/s). */
export function memcpyBandwidth(bin: string, mib: number): number {
  const r = spawnSync(bin, ['--memcpy', String(mib)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`memcpy bench failed: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { memcpyGBps: number }).memcpyGBps;
}
