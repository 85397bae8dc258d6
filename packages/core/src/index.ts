export {};
export * from './handler.js';
