/**
 * mulberry32: a small, fast, seeded PRNG, so runs replay: the same numbers
 * for the same 32-bit seed. Good enough for fault draws, fuzzing and test
 * data; not for anything that needs to be unpredictable.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
