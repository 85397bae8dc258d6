// Imported first by the bench: each simulated LUN keeps one poll() on the
// libuv pool (the simulator's kick loop), each device worker one more while
// idle, and the file handler's IO uses the same pool. libuv sizes the pool
// on its first use, so this must run before anything touches it.
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16';
export {};
