/**
 * Self-checking block contents for the built-in load: every block written
 * carries its LBA and a write generation, and the rest of it is derived from
 * both, so a read proves it got the latest acknowledged write for that block
 * (not a stale one, not another block's, not a torn one).
 */
export function fillBlocks(buf: Uint8Array, lba: number, blockSize: number, generation: number): void {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
  const perBlock = blockSize >>> 2;
  for (let b = 0, w = 0; w < words.length; b++, w += perBlock) {
    const l = lba + b;
    let x = (Math.imul(l, 0x9e3779b1) ^ Math.imul(generation, 0x85ebca6b) ^ 0x27d4eb2f) >>> 0 || 1;
    words[w] = l >>> 0;
    words[w + 1] = Math.floor(l / 0x100000000);
    words[w + 2] = generation;
    for (let i = 3; i < perBlock; i++) {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      words[w + i] = x >>> 0;
    }
  }
}

/**
 * Index of the first block of `buf` that is not what `fillBlocks` wrote with
 * the generation `expected(lba)` gives (0 means never written: all zeros),
 * or -1 when every block matches.
 */
export function checkBlocks(buf: Uint8Array, lba: number, blockSize: number, generationOf: (lba: number) => number, scratch: Uint8Array): number {
  const blocks = buf.byteLength / blockSize;
  for (let b = 0; b < blocks; b++) {
    const gen = generationOf(lba + b);
    const got = buf.subarray(b * blockSize, (b + 1) * blockSize);
    if (gen === 0) {
      for (let i = 0; i < got.length; i++) if (got[i] !== 0) return b;
      continue;
    }
    const want = scratch.subarray(0, blockSize);
    fillBlocks(want, lba + b, blockSize, gen);
    if (Buffer.compare(got, want) !== 0) return b;
  }
  return -1;
}
