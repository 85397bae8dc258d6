/**
 * The pure part of core: the handler contract and loader, the SCSI core,
 * and the control-plane codecs and parsers. Nothing here loads koffi; the
 * code that does I/O (netlink socket, configfs, sysfs, tcmu.conf, log file)
 * is `@tcmu-ts/core/host`.
 */
export * from './handler.js';
export * from './handler-loader.js';
export * from './prng.js';
export * from './scsi/index.js';
export * from './control/nlattr.js';
export * from './control/netlink.js';
export * from './control/tcmu-nl.js';
export * from './control/uio.js';
export * from './control/configfs.js';
export * from './control/config.js';
export * from './control/log.js';
