export * from './ram.js';
export * from './file.js';
export * from './rbd.js';
export * from './qcow.js';
export * from './qcow-format.js';
export * from './fbo.js';
export * from './mmc.js';
export * from './builtins.js';
