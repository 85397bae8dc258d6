#!/usr/bin/env node
// `npx tcmu-ts` entry: build if needed, then hand over to the daemon CLI.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const built = spawnSync(process.execPath, [join(root, 'scripts', 'ensure-built.mjs')], { stdio: 'inherit', env: { ...process.env, TCMU_TS_QUIET_BUILD: '1' } });
if (built.status !== 0) process.exit(built.status ?? 1);
await import(join(root, 'packages', 'workers', 'dist', 'cli', 'main.js'));
