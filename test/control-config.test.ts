import { expect } from 'chai';
import { mkdtemp, mkdir, writeFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseTcmuConf, resolveTcmuConfig, parseTcmuCliArgs, formatConfIssue, tcmuConfPath } from '@tcmu-ts/core/control/config';
import { loadTcmuConf, TcmuConfWatcher, type TcmuConfReload } from '@tcmu-ts/core/host/config';

// tcmu-runner's shipped tcmu.conf: everything commented out.
const SHIPPED = `# Master TCMU configuration file

# Logging Controls
# There are 6 logging levels supported:
#    0: CRIT
#    1: ERROR
#    2: WARNING
#    3: INFO
#    4: DEBUG
#    5: DEBUG SCSI CMD
# And the default logging level is 3, if you want to change the
# default level, uncomment it and set your level number:
# log_level = 3
#
# Logging Directory Path
# The default logging Directory path is /var/log, uncomment it
# and set your own path:
# log_dir = "/var/log"
`;

describe('control/config: tcmu.conf', () => {
  describe('parseTcmuConf', () => {
    it('reads the shipped file as empty', () => {
      expect(parseTcmuConf(SHIPPED)).to.deep.equal({ extra: {}, errors: [], warnings: [] });
    });

    it('takes values with the blanks, quotes and line ends tcmu-runner accepts', () => {
      const c = parseTcmuConf('\t log_level\t=\t4  \r\n  # indented comment\r\nlog_dir = "/var/log/tcmu dir"\r\n\r\n');
      expect(c).to.deep.equal({ logLevel: 4, logDir: '/var/log/tcmu dir', extra: {}, errors: [], warnings: [] });
      expect(parseTcmuConf("log_dir='/a/\"b\"'").logDir).to.equal('/a/"b"');
      expect(parseTcmuConf('log_dir = "/a/\'b\'"').logDir).to.equal("/a/'b'");
      expect(parseTcmuConf('log_dir=/plain/path').logDir).to.equal('/plain/path');
      expect(parseTcmuConf('log_level=0\rlog_level=5').logLevel).to.equal(5);
      expect(parseTcmuConf('log_level = 2 # warnings and worse').logLevel).to.equal(2);
    });

    it('lets a later line win, with a warning', () => {
      const c = parseTcmuConf('log_level = 1\nlog_level = 4\n');
      expect(c.logLevel).to.equal(4);
      expect(c.warnings).to.deep.equal([{ line: 2, message: 'log_level set again (line 1 is overridden)', text: 'log_level = 4' }]);
    });

    it('accepts log_dir_path, the old key, as log_dir', () => {
      const c = parseTcmuConf('log_dir_path = "/old/style"');
      expect(c.logDir).to.equal('/old/style');
      expect(c.warnings[0].message).to.match(/old name of log_dir/);
    });

    it('keeps unknown keys, typed like tcmu-runner types them, with a warning', () => {
      const c = parseTcmuConf('future_int = 12\nfuture_str = "x y"\nfuture_flag\n');
      expect(c.extra).to.deep.equal({ future_int: 12, future_str: 'x y', future_flag: true });
      expect(c.warnings.map((w) => w.line)).to.deep.equal([1, 2, 3]);
      expect(c.errors).to.deep.equal([]);
    });

    const bad: [string, RegExp][] = [
      ['log_level = 9', /out of range 0\.\.5/],
      ['log_level = -1', /out of range/],
      ['log_level = 3abc', /must be a number/],
      ['log_level = debug', /must be a number/],
      ['log_level =', /needs a value/],
      ['log_level', /needs a value/],
      ['log_dir = ', /needs a directory/],
      ['log_dir = relative/dir', /absolute/],
      ['log_dir = "/unterminated', /unmatched "/],
      ["log_dir = /mismatched'", /unmatched '/],
      ['log_dir = ""', /empty/],
      [`log_dir = /${'x'.repeat(5000)}`, /longer than/],
      ['1log_level = 3', /expected an option name/],
      ['_x = 1', /expected an option name/],
      ['log-level = 3', /invalid option name/],
      ['log_level 3', /unexpected "3" after log_level/],
    ];
    for (const [text, re] of bad) {
      it(`reports ${JSON.stringify(text.slice(0, 40))} as an error line and ignores it`, () => {
        const c = parseTcmuConf(`# header\n${text}\n`);
        expect(c.errors).to.have.length(1);
        expect(c.errors[0].line).to.equal(2);
        expect(c.errors[0].text).to.equal(text);
        expect(c.errors[0].message).to.match(re);
        expect(c.logLevel).to.equal(undefined);
        expect(c.logDir).to.equal(undefined);
      });
    }

    it('drops an earlier good value when the latest line for the key is bad', () => {
      const c = parseTcmuConf('log_level = 4\nlog_level = 7\nlog_dir = /ok\n');
      expect(c.logLevel).to.equal(undefined);
      expect(c.logDir).to.equal('/ok');
      expect(formatConfIssue(c.errors[0], '/etc/tcmu/tcmu.conf')).to.equal('/etc/tcmu/tcmu.conf:2: log_level 7 out of range 0..5 (0 CRIT, 1 ERROR, 2 WARNING, 3 INFO, 4 DEBUG, 5 DEBUG SCSI CMD)');
    });

    it('keeps a good value when a bad line comes before it', () => {
      const c = parseTcmuConf('log_level = 7\nlog_level = 4\n');
      expect(c.logLevel).to.equal(4);
      expect(c.errors).to.have.length(1);
    });
  });

  describe('resolveTcmuConfig: file > command line > environment > defaults', () => {
    it('uses the defaults: INFO and /var/log', () => {
      expect(resolveTcmuConfig()).to.deep.equal({ logLevel: 3, logDir: '/var/log', sources: { logLevel: 'default', logDir: 'default' } });
    });
    it('TCMU_LOGDIR beats the default', () => {
      expect(resolveTcmuConfig({ env: { TCMU_LOGDIR: '/env' } })).to.deep.include({ logDir: '/env', sources: { logLevel: 'default', logDir: 'env' } });
      expect(resolveTcmuConfig({ env: { TCMU_LOGDIR: '' } }).logDir).to.equal('/var/log');
    });
    it('-l beats TCMU_LOGDIR, -d sets level 5', () => {
      const r = resolveTcmuConfig({ cli: { logDir: '/cli', debug: true }, env: { TCMU_LOGDIR: '/env' } });
      expect(r).to.deep.equal({ logLevel: 5, logDir: '/cli', sources: { logLevel: 'cli', logDir: 'cli' } });
    });
    it('the file beats everything, key by key', () => {
      const all = { cli: { logDir: '/cli', debug: true }, env: { TCMU_LOGDIR: '/env' } };
      expect(resolveTcmuConfig({ ...all, file: { logLevel: 1, logDir: '/file' } })).to.deep.equal({
        logLevel: 1, logDir: '/file', sources: { logLevel: 'file', logDir: 'file' },
      });
      expect(resolveTcmuConfig({ ...all, file: { logLevel: 2 } })).to.deep.equal({
        logLevel: 2, logDir: '/cli', sources: { logLevel: 'file', logDir: 'cli' },
      });
      expect(resolveTcmuConfig({ ...all, file: parseTcmuConf('log_dir = /file') })).to.deep.include({ logLevel: 5, logDir: '/file' });
    });
  });

  describe('parseTcmuCliArgs', () => {
    it('takes tcmu-runner\'s -d and -l in their forms and leaves the rest', () => {
      expect(parseTcmuCliArgs(['-d', '-l', '/a', '--x', 'y'])).to.deep.equal({ options: { debug: true, logDir: '/a' }, rest: ['--x', 'y'] });
      expect(parseTcmuCliArgs(['--debug', '--tcmu-log-dir=/b']).options).to.deep.equal({ debug: true, logDir: '/b' });
      expect(parseTcmuCliArgs(['--tcmu-log-dir', '/c']).options).to.deep.equal({ logDir: '/c' });
      expect(parseTcmuCliArgs(['-l/d']).options).to.deep.equal({ logDir: '/d' });
      expect(() => parseTcmuCliArgs(['-l'])).to.throw(/needs a directory/);
    });
  });

  describe('loading and watching', () => {
    let root: string;
    let conf: string;
    beforeEach(async () => {
      root = await mkdtemp(join(tmpdir(), 'tcmu-conf-'));
      await mkdir(join(root, 'etc', 'tcmu'), { recursive: true });
      conf = join(root, 'etc', 'tcmu', 'tcmu.conf');
    });
    afterEach(async () => {
      await rm(root, { recursive: true, force: true });
    });

    it('loads <root>/etc/tcmu/tcmu.conf; a missing file is empty', async () => {
      expect(tcmuConfPath({ root })).to.equal(conf);
      expect(await loadTcmuConf({ root })).to.deep.equal({ path: conf, missing: true, extra: {}, errors: [], warnings: [] });
      await writeFile(conf, 'log_level = 4\n');
      expect(await loadTcmuConf({ root })).to.deep.include({ missing: false, logLevel: 4 });
    });

    it('refuses a file over 2 MiB as tcmu-runner reads no more', async () => {
      await writeFile(conf, '#'.repeat(2 * 1024 * 1024 + 1));
      const c = await loadTcmuConf({ root });
      expect(c.errors[0].message).to.match(/larger than/);
    });

    function nextReload(w: TcmuConfWatcher, pred: (r: TcmuConfReload) => boolean = () => true): Promise<TcmuConfReload> {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no reload within 5 s')), 5000);
        const on = (r: TcmuConfReload) => {
          if (!pred(r)) return;
          clearTimeout(t);
          w.off('reload', on);
          resolve(r);
        };
        w.on('reload', on);
      });
    }

    it('re-reads on in-place edits and on save-by-rename; commenting out falls back to the command line', async () => {
      await writeFile(conf, 'log_level = 2\n');
      const w = new TcmuConfWatcher({ root, cli: { debug: true, logDir: '/cli' }, env: {}, debounceMs: 30 });
      try {
        const first = await w.start();
        expect(w.watching).to.equal(true);
        expect(first).to.deep.include({ changed: true, previous: null });
        expect(first.config).to.deep.include({ logLevel: 2, logDir: '/cli' });

        let r = nextReload(w, (x) => x.config.logLevel === 4);
        await writeFile(conf, 'log_level = 4\n');
        expect((await r).previous?.logLevel).to.equal(2);

        r = nextReload(w, (x) => x.config.logDir === '/renamed');
        await writeFile(join(root, 'etc', 'tcmu', '.tcmu.conf.swp'), 'log_level = 4\nlog_dir = /renamed\n');
        await rename(join(root, 'etc', 'tcmu', '.tcmu.conf.swp'), conf);
        expect((await r).config.sources.logDir).to.equal('file');

        r = nextReload(w, (x) => x.config.logLevel === 5);
        await writeFile(conf, '# log_level = 4\n# log_dir = /renamed\n');
        const back = await r;
        expect(back.config).to.deep.equal({ logLevel: 5, logDir: '/cli', sources: { logLevel: 'cli', logDir: 'cli' } });
        expect(w.current).to.deep.equal(back.config);
      } finally {
        w.close();
      }
    });

    it('reports bad lines on reload and keeps going', async () => {
      await writeFile(conf, 'log_level = 3\n');
      const w = new TcmuConfWatcher({ root, env: {}, debounceMs: 30 });
      try {
        await w.start();
        const r = nextReload(w, (x) => x.file.errors.length > 0);
        await writeFile(conf, 'log_level = 11\n');
        const got = await r;
        expect(got.config.logLevel).to.equal(3);
        expect(got.changed).to.equal(false);
        expect(got.file.errors[0].line).to.equal(1);
      } finally {
        w.close();
      }
    });

    it('ignores other files in the directory', async () => {
      await writeFile(conf, 'log_level = 3\n');
      const w = new TcmuConfWatcher({ root, env: {}, debounceMs: 20 });
      let reloads = 0;
      try {
        await w.start();
        w.on('reload', () => reloads++);
        await writeFile(join(root, 'etc', 'tcmu', 'other.conf'), 'x');
        await new Promise((res) => setTimeout(res, 200));
        expect(reloads).to.equal(0);
        await w.reload();
        expect(reloads).to.equal(1);
      } finally {
        w.close();
      }
    });

    it('warns and still loads when the directory cannot be watched', async () => {
      const w = new TcmuConfWatcher({ path: join(root, 'nowhere', 'tcmu.conf'), env: { TCMU_LOGDIR: '/e' } });
      const warnings: Error[] = [];
      w.on('warning', (e) => warnings.push(e));
      const first = await w.start();
      expect(first.file.missing).to.equal(true);
      expect(first.config.logDir).to.equal('/e');
      expect(w.watching).to.equal(false);
      expect(warnings[0].message).to.match(/cannot watch/);
      w.close();
    });
  });
});
