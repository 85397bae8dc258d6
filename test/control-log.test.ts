import { expect } from 'chai';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync, renameSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LogLevel, formatLogLine, formatLogTime, clampLogLevel, LOG_LEVEL_NAMES } from '@tcmu-ts/core/control/log';
import { Logger, DEFAULT_LOG_FILE } from '@tcmu-ts/core/host/log';

class Capture {
  lines: string[] = [];
  write(s: string) {
    this.lines.push(s);
  }
}

const T = new Date(2024, 0, 2, 3, 4, 5, 6); // local time
const fixed = { clock: () => T, pid: 77 };

describe('control/log: tcmu-runner style logger', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tcmu-log-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('formats lines like tcmu-runner: local time with ms, pid, [LEVEL], device prefix', () => {
    expect(formatLogTime(T)).to.equal('2024-01-02 03:04:05.006');
    expect(formatLogLine(T, 77, LogLevel.INFO, 'hello\n', 'dev0')).to.equal('2024-01-02 03:04:05.006 77 [INFO] dev0: hello\n');
    expect(formatLogLine(T, 77, LogLevel.DEBUG_SCSI_CMD, 'cdb 28 00')).to.equal('2024-01-02 03:04:05.006 77 [DEBUG_SCSI_CMD] cdb 28 00\n');
    expect(formatLogLine(T, 1, LogLevel.WARN, 'a\nb\r\nc')).to.equal('2024-01-02 03:04:05.006 1 [WARN] a\\nb\\r\\nc\n');
  });

  it('has the six levels of tcmu.conf and clamps like tcmu_set_log_level', () => {
    expect(LogLevel).to.deep.equal({ CRIT: 0, ERROR: 1, WARN: 2, INFO: 3, DEBUG: 4, DEBUG_SCSI_CMD: 5 });
    expect(LOG_LEVEL_NAMES).to.deep.equal(['CRIT', 'ERROR', 'WARNING', 'INFO', 'DEBUG', 'DEBUG SCSI CMD']);
    expect([-3, 0, 2.7, 5, 9, NaN].map(clampLogLevel)).to.deep.equal([0, 0, 2, 5, 5, 3]);
  });

  it('writes events at or below the level, to stderr and the file, one line each', () => {
    const err = new Capture();
    const log = new Logger({ ...fixed, stderr: err, logDir: dir });
    expect(log.level).to.equal(LogLevel.INFO);
    expect(log.filePath).to.equal(join(dir, DEFAULT_LOG_FILE));
    log.crit('c');
    log.error('e');
    log.warn('w');
    log.info('i');
    log.debug('hidden');
    log.debugScsiCmd('hidden too');
    const d = log.forDevice('dev0');
    d.info('opened');
    d.debug('hidden');
    expect(d.enabled(LogLevel.DEBUG)).to.equal(false);
    const want = ['[CRIT] c', '[ERROR] e', '[WARN] w', '[INFO] i', '[INFO] dev0: opened'].map((s) => `2024-01-02 03:04:05.006 77 ${s}\n`);
    expect(err.lines).to.deep.equal(want);
    expect(readFileSync(join(dir, DEFAULT_LOG_FILE), 'utf8')).to.equal(want.join(''));
    log.close();
  });

  it('changes level at run time and announces it at CRIT', () => {
    const err = new Capture();
    const log = new Logger({ ...fixed, stderr: err, level: LogLevel.ERROR });
    log.info('hidden');
    expect(log.setLevel(5)).to.equal(5);
    log.debugScsiCmd('now visible');
    expect(log.setLevel(5)).to.equal(5); // no change, no announcement
    expect(log.setLevel(42)).to.equal(5);
    expect(log.setLevel(0)).to.equal(0);
    log.error('hidden again');
    expect(err.lines.map((l) => l.slice(24))).to.deep.equal([
      '77 [CRIT] log level now is DEBUG SCSI CMD\n',
      '77 [DEBUG_SCSI_CMD] now visible\n',
      '77 [CRIT] log level now is CRIT\n',
    ]);
  });

  it('appends to an existing file and rotates by size, keeping maxFiles old files', () => {
    writeFileSync(join(dir, DEFAULT_LOG_FILE), 'old line\n');
    const log = new Logger({ ...fixed, stderr: false, logDir: dir, maxBytes: 200, maxFiles: 2 });
    const lineLen = formatLogLine(T, 77, LogLevel.INFO, 'line 00').length; // 44 bytes
    for (let i = 0; i < 30; i++) log.info(`line ${String(i).padStart(2, '0')}`);
    log.close();
    expect(readdirSync(dir).sort()).to.deep.equal([DEFAULT_LOG_FILE, `${DEFAULT_LOG_FILE}.1`, `${DEFAULT_LOG_FILE}.2`]);
    const read = (n: string) => readFileSync(join(dir, n), 'utf8').split('\n').filter(Boolean).map((l) => l.replace(/^.* \[INFO\] /, ''));
    const files = [`${DEFAULT_LOG_FILE}.2`, `${DEFAULT_LOG_FILE}.1`, DEFAULT_LOG_FILE];
    for (const f of files) expect(statSync(join(dir, f)).size).to.be.at.most(200);
    const perFile = Math.floor(200 / lineLen);
    const kept = files.flatMap(read);
    // The newest lines survive, in order, with nothing missing between them.
    expect(kept[kept.length - 1]).to.equal('line 29');
    const nums = kept.map((l) => Number(l.slice(5)));
    nums.forEach((n, i) => i > 0 && expect(n).to.equal(nums[i - 1] + 1));
    expect(read(DEFAULT_LOG_FILE).length).to.be.at.most(perFile);
  });

  it('with maxFiles 0 starts the file over', () => {
    const log = new Logger({ ...fixed, stderr: false, logDir: dir, maxBytes: 100, maxFiles: 0 });
    for (let i = 0; i < 10; i++) log.info(`n${i}`);
    log.close();
    expect(readdirSync(dir)).to.deep.equal([DEFAULT_LOG_FILE]);
    expect(readFileSync(join(dir, DEFAULT_LOG_FILE), 'utf8')).to.match(/n9\n$/);
  });

  it('moves to a new log dir (creating it), and keeps the old one when the new one is unusable', () => {
    const err = new Capture();
    const log = new Logger({ ...fixed, stderr: err, logDir: join(dir, 'a') });
    log.info('in a');
    expect(log.setLogDir(join(dir, 'b', 'c'))).to.equal(true);
    log.info('in b');
    writeFileSync(join(dir, 'plainfile'), '');
    expect(log.setLogDir(join(dir, 'plainfile', 'x'))).to.equal(false);
    log.info('still b');
    expect(log.filePath).to.equal(join(dir, 'b', 'c', DEFAULT_LOG_FILE));
    const a = readFileSync(join(dir, 'a', DEFAULT_LOG_FILE), 'utf8');
    const b = readFileSync(join(dir, 'b', 'c', DEFAULT_LOG_FILE), 'utf8');
    expect(a).to.contain('in a').and.not.contain('in b');
    expect(b).to.contain(`[CRIT] log file path now is '${join(dir, 'b', 'c', DEFAULT_LOG_FILE)}'`);
    expect(b).to.contain('in b').and.contain('still b').and.match(/\[ERROR\] could not set up log dir/);
    expect(log.setLogDir(null)).to.equal(true);
    log.info('stderr only');
    expect(log.filePath).to.equal(null);
    expect(readFileSync(join(dir, 'b', 'c', DEFAULT_LOG_FILE), 'utf8')).to.not.contain('stderr only');
    expect(err.lines[err.lines.length - 1]).to.contain('stderr only');
    log.close();
  });

  it('reopens by name after an external rotation (logrotate + SIGHUP)', () => {
    const log = new Logger({ ...fixed, stderr: false, logDir: dir });
    log.info('before');
    renameSync(join(dir, DEFAULT_LOG_FILE), join(dir, `${DEFAULT_LOG_FILE}-rotated`));
    log.info('still to the renamed file');
    log.reopen();
    log.info('after');
    log.close();
    expect(readFileSync(join(dir, `${DEFAULT_LOG_FILE}-rotated`), 'utf8')).to.contain('still to the renamed file');
    expect(readFileSync(join(dir, DEFAULT_LOG_FILE), 'utf8')).to.match(/after\n$/).and.not.contain('before');
  });

  it('reports a failing log file once on stderr and keeps logging there', function () {
    if (!existsSync('/dev/full')) this.skip();
    const err = new Capture();
    const log = new Logger({ ...fixed, stderr: err, logDir: '/dev', fileName: 'full' });
    log.info('one');
    log.info('two');
    log.close();
    expect(err.lines.map((l) => l.slice(27))).to.deep.equal([
      '[INFO] one\n', '[ERROR] log file /dev/full write failed: ENOSPC: no space left on device, write\n', '[INFO] two\n',
    ]);
  });

  it('a log dir it cannot make (under /proc, where a recursive mkdirSync never returns) is one error line, then stderr only', () => {
    const err = new Capture();
    const log = new Logger({ ...fixed, stderr: err, logDir: '/proc/no/such/dir' });
    log.info('still here');
    log.close();
    expect(log.filePath).to.equal(null);
    expect(err.lines.map((l) => l.slice(27))).to.deep.equal([
      "[ERROR] could not set up log dir /proc/no/such/dir: ENOENT: no such file or directory, mkdir '/proc/no'; logging to stderr only\n",
      '[INFO] still here\n',
    ]);
  });

  it('refuses a file name with a slash and nonsense sizes', () => {
    expect(() => new Logger({ fileName: 'a/b', stderr: false })).to.throw(RangeError);
    expect(() => new Logger({ maxBytes: 0, stderr: false })).to.throw(RangeError);
    expect(() => new Logger({ maxFiles: -1, stderr: false })).to.throw(RangeError);
  });
});
