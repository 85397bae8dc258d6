export * from './counters.js';
export * from './device-spec.js';
export * from './supervisor.js';
export * from './sim-backend.js';
export * from './demo-load.js';
export * from './verify-pattern.js';
export * from './daemon.js';
export * from './kernel-backend.js';
