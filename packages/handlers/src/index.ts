export {};
export * from './ram.js';
export * from './file.js';
