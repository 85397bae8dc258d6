export * from './abi.js';
export * from './sys.js';
export * from './consumer.js';
