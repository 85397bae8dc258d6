export * from './abi.js';
export * from './sys.js';
