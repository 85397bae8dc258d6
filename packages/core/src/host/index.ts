/**
 * The part of core that does I/O: the generic netlink socket (through koffi),
 * configfs and sysfs reads and writes, UIO discovery, tcmu.conf reading and
 * watching, and the log file writer. Importing this loads koffi; the main
 * `@tcmu-ts/core` index is pure and does not.
 */
export * from './netlink.js';
export * from './configfs.js';
export * from './uio.js';
export * from './config.js';
export * from './log.js';
