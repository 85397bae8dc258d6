export {};
export * from './handler.js';
export * from './handler-loader.js';
