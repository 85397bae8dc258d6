export {};
export * from './handler.js';
export * from './handler-loader.js';
export * from './scsi/index.js';
