export * from './sense.js';
export * from './device.js';
export * from './cdb.js';
export * from './outcome.js';
export * from './inquiry.js';
export * from './capacity.js';
export * from './mode.js';

export * from './alua.js';
export * from './sbc.js';
export * from './xcopy.js';
export * from './planner.js';
export { hexBytes, be16, be24, be32, put16, put24, put32 } from './bytes.js';
export * from './supported-opcodes.js';
