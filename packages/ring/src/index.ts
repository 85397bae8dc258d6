export * from './abi.js';
export * from './sys.js';
export * from './errno.js';
export * from './consumer.js';
export * from './kernel-scsi.js';
export * from './sim/clock.js';
export * from './sim/simulator.js';
export * from './sim/initiator.js';
