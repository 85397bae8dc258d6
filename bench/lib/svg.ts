/** Hand-written SVG line charts: enough axes, ticks and legend to read a bench figure. */

export interface Series {
  name: string;
  points: [number, number][];
  color?: string;
  dashed?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  xLog?: boolean;
  yMin?: number;
  yMax?: number;
  /** Format a tick value. */
  xFmt?: (v: number) => string;
  yFmt?: (v: number) => string;
  /** Draw steps (for a CDF) instead of straight segments. */
  step?: boolean;
  subtitle?: string;
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
const W = 760;
const H = 460;
const M = { l: 78, r: 200, t: 56, b: 58 };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function niceStep(span: number, n: number): number {
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

export function si(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e3) return `${+(v / 1e3).toPrecision(3)}k`;
  return `${+v.toPrecision(3)}`;
}

export function lineChart(o: ChartOptions): string {
  const pts = o.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  let x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  if (!pts.length) [x0, x1] = [1, 2];
  if (x0 === x1) x1 = x0 * 2 || 1;
  const y0 = o.yMin ?? 0;
  let y1 = o.yMax ?? Math.max(...ys, 0) * 1.08;
  if (!(y1 > y0)) y1 = y0 + 1;
  const pw = W - M.l - M.r;
  const ph = H - M.t - M.b;
  const lx0 = Math.log2(x0 > 0 ? x0 : 1);
  const lx1 = Math.log2(x1 > 0 ? x1 : 2);
  // A little room on both sides of a linear axis so end points are not on the frame.
  const padX = o.xLog ? 0 : (x1 - x0) * 0.04;
  const X = (x: number) => M.l + (o.xLog ? (Math.log2(x) - lx0) / (lx1 - lx0 || 1) : (x - x0 + padX) / (x1 - x0 + 2 * padX)) * pw;
  const Y = (y: number) => M.t + ph - ((Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0)) * ph;
  const xf = o.xFmt ?? si;
  const yf = o.yFmt ?? si;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${M.l}" y="22" font-size="16" font-weight="bold">${esc(o.title)}</text>`);
  if (o.subtitle) out.push(`<text x="${M.l}" y="40" fill="#555">${esc(o.subtitle)}</text>`);
  // y grid and ticks
  const ys_ = niceStep(y1 - y0, 6);
  for (let k = Math.ceil(y0 / ys_); k * ys_ <= y1 + 1e-9; k++) {
    const v = Number((k * ys_).toPrecision(12));
    const y = Y(v);
    out.push(`<line x1="${M.l}" x2="${M.l + pw}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${M.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end">${esc(yf(v))}</text>`);
  }
  // x ticks: powers of two on a log axis, nice steps otherwise
  const xticks: number[] = [];
  if (o.xLog) {
    const step = Math.max(1, Math.ceil((lx1 - lx0) / 12));
    for (let e = Math.ceil(lx0); e <= Math.floor(lx1); e += step) xticks.push(2 ** e);
  } else {
    let xs_ = niceStep(x1 - x0, 8);
    if (xs.every(Number.isInteger)) xs_ = Math.max(1, Math.round(xs_));
    for (let k = Math.ceil(x0 / xs_); k * xs_ <= x1 + 1e-9; k++) xticks.push(Number((k * xs_).toPrecision(12)));
  }
  for (const v of xticks) {
    const x = X(v);
    out.push(`<line x1="${x.toFixed(1)}" x2="${x.toFixed(1)}" y1="${M.t}" y2="${M.t + ph}" stroke="#f0f0f0"/>`);
    out.push(`<text x="${x.toFixed(1)}" y="${M.t + ph + 16}" text-anchor="middle">${esc(xf(v))}</text>`);
  }
  out.push(`<rect x="${M.l}" y="${M.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${M.l + pw / 2}" y="${H - 14}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  out.push(`<text transform="translate(18 ${M.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`);
  o.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!o.xLog || x > 0));
    if (p.length) {
      let d = `M${X(p[0][0]).toFixed(1)},${Y(p[0][1]).toFixed(1)}`;
      for (let k = 1; k < p.length; k++) {
        if (o.step) d += ` H${X(p[k][0]).toFixed(1)}`;
        d += ` ${o.step ? 'V' : 'L'}${o.step ? Y(p[k][1]).toFixed(1) : `${X(p[k][0]).toFixed(1)},${Y(p[k][1]).toFixed(1)}`}`;
      }
      out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
      if (!o.step) for (const [x, y] of p) out.push(`<circle cx="${X(x).toFixed(1)}" cy="${Y(y).toFixed(1)}" r="3" fill="${color}"/>`);
    }
    const ly = M.t + 14 + i * 20;
    out.push(`<line x1="${M.l + pw + 14}" x2="${M.l + pw + 40}" y1="${ly - 4}" y2="${ly - 4}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    out.push(`<text x="${M.l + pw + 46}" y="${ly}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
