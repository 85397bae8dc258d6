export {};
export * from './ram.js';
export * from './file.js';
export * from './rbd.js';
export * from './builtins.js';
