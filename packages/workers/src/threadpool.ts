// Imported first by the CLI: every device keeps one poll() on the libuv pool
// while idle and the file handler's I/O uses the same pool, so the default of
// four threads is too few. libuv reads this once, on the pool's first use.
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '32';
export {};
