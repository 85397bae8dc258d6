/**
 * A device's log lines are limited per window (engine/log-rate-limit.ts):
 * a handler failing every command must not flood the supervisor, and no
 * line may vanish without being counted.
 */
import { expect } from 'chai';
import { LogRateLimit } from '@tcmu-ts/workers/engine/log-rate-limit';

describe('LogRateLimit', () => {
  function limited(burst = 3, windowMs = 1000) {
    let t = 0;
    const out: string[] = [];
    const lim = new LogRateLimit((level, msg) => out.push(`${level} ${msg}`), { burst, windowMs, now: () => t });
    return { lim, out, at: (ms: number) => void (t = ms) };
  }
  const leftOut = (lines: string[]) => lines.reduce((n, l) => n + Number(/^warn (\d+) more log line/.exec(l)?.[1] ?? 0), 0);

  it('lets `burst` lines through per window, counts the rest and says how many at the next window', () => {
    const { lim, out, at } = limited();
    for (let i = 0; i < 10; i++) lim.log('error', `e${i}`);
    expect(out).to.deep.equal(['error e0', 'error e1', 'error e2']);
    at(1000);
    lim.log('warn', 'next');
    expect(out.slice(3)).to.deep.equal(['warn 7 more log line(s) left out in 1.0 s (at most 3 per 1.0 s per device; the metrics count every command)', 'warn next']);
  });

  it('a window ending in silence is still summed up, by a timer', async () => {
    const { lim, out } = limited(1, 20);
    lim.log('info', 'a');
    lim.log('info', 'b');
    lim.log('info', 'c');
    expect(out).to.deep.equal(['info a']);
    await new Promise((r) => setTimeout(r, 60));
    expect(leftOut(out)).to.equal(2);
  });

  it('flush() says what is pending (at stop), and nothing when nothing was left out', () => {
    const { lim, out } = limited(2);
    lim.log('warn', 'a');
    lim.flush();
    expect(out).to.deep.equal(['warn a']);
    for (let i = 0; i < 5; i++) lim.log('warn', 'x');
    lim.flush();
    expect(leftOut(out)).to.equal(3);
    lim.log('warn', 'after');
    expect(out.at(-1), 'a new window after flush').to.equal('warn after');
  });

  it('every line is either logged or counted, whatever the timing', () => {
    const { lim, out, at } = limited(5, 100);
    let t = 0;
    for (let i = 0; i < 5000; i++) {
      t += (i * 7919) % 13; // irregular gaps, some windows full, some not
      at(t);
      lim.log('error', 'x');
    }
    lim.flush();
    const logged = out.filter((l) => l === 'error x').length;
    expect(logged + leftOut(out)).to.equal(5000);
    expect(logged).to.be.at.most(5 * Math.ceil(t / 100 + 1));
  });
});
