export * from './abi.js';
export * from './sys.js';
export * from './consumer.js';
export * from './sim-scsi.js';
export * from './sim-clock.js';
export * from './simulator.js';
export * from './initiator.js';
