import { expect } from 'chai';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseUioName, extractDaemonOptions, parseMapSize, UioNameError, UioDeviceError } from '@tcmu-ts/core/control/uio';
import { scanUioDevices, readUioDevice } from '@tcmu-ts/core/host/uio';

/** Lay out /sys/class/uio/uioN the way the uio core does (name and map0 size end with a newline). */
async function fakeUio(root: string, n: number, name: string | null, size: string | null = '0x0000000040800000'): Promise<void> {
  const dir = join(root, 'sys', 'class', 'uio', `uio${n}`);
  await mkdir(join(dir, 'maps', 'map0'), { recursive: true });
  if (name !== null) await writeFile(join(dir, 'name'), `${name}\n`);
  if (size !== null) await writeFile(join(dir, 'maps', 'map0', 'size'), `${size}\n`);
  await writeFile(join(dir, 'maps', 'map0', 'offset'), '0x0\n');
  await writeFile(join(dir, 'maps', 'map0', 'name'), 'tcm-user command & data buffer\n');
}

describe('control/uio: TCMU device discovery', () => {
  describe('parseUioName', () => {
    it('splits hba, device, subtype and handler config', () => {
      expect(parseUioName('tcm-user/0/dev0/file/foo')).to.deep.equal({
        raw: 'tcm-user/0/dev0/file/foo', hba: 0, devName: 'dev0', devConfig: 'file/foo',
        subtype: 'file', cfgstring: 'foo', daemonOptions: {},
      });
    });

    it('keeps slashes of an absolute path in the handler config (rtslib writes file//path)', () => {
      const n = parseUioName('tcm-user/12/disk_a/file//var/lib/disk a.img');
      expect(n).to.include({ hba: 12, devName: 'disk_a', subtype: 'file', cfgstring: '/var/lib/disk a.img' });
    });

    it('takes a leading ;tcmur_cmd_time_out=N; out of the handler config', () => {
      const n = parseUioName('tcm-user/1/rbd0/rbd/;tcmur_cmd_time_out=20;pool/rbd1;osd_op_timeout=30');
      expect(n.daemonOptions).to.deep.equal({ cmdTimeOut: 20 });
      expect(n.cfgstring).to.equal('pool/rbd1;osd_op_timeout=30');
      expect(n.devConfig).to.equal('rbd/;tcmur_cmd_time_out=20;pool/rbd1;osd_op_timeout=30');
    });

    it('follows tcmu-runner: the option is removed wherever it appears, others stay', () => {
      expect(extractDaemonOptions('/img;tcmur_cmd_time_out=5')).to.deep.equal({ cfgstring: '/img', options: { cmdTimeOut: 5 } });
      expect(extractDaemonOptions('a;b=1;tcmur_cmd_time_out=7;c')).to.deep.equal({ cfgstring: 'a;b=1c', options: { cmdTimeOut: 7 } });
      expect(extractDaemonOptions(';tcmur_cmd_time_out=1;;tcmur_cmd_time_out=2;/x')).to.deep.equal({ cfgstring: '/x', options: { cmdTimeOut: 2 } });
      expect(extractDaemonOptions(';foo=1;/x')).to.deep.equal({ cfgstring: ';foo=1;/x', options: {} });
      expect(extractDaemonOptions('')).to.deep.equal({ cfgstring: '', options: {} });
    });

    it('accepts a subtype with no handler config', () => {
      expect(parseUioName('tcm-user/0/r/ram')).to.include({ subtype: 'ram', cfgstring: '' });
    });

    const bad: [string, string][] = [
      ['uio_pci_generic', 'not-tcmu'],
      ['tcm-user', 'not-tcmu'],
      ['tcm-userx/0/d/file/x', 'not-tcmu'],
      ['tcm-user/0', 'bad-dev-name'],
      ['tcm-user/x/dev0/file/foo', 'bad-hba'],
      ['tcm-user/-1/dev0/file/foo', 'bad-hba'],
      ['tcm-user/4294967296/dev0/file/foo', 'bad-hba'],
      ['tcm-user//dev0/file/foo', 'bad-hba'],
      ['tcm-user/0//file/foo', 'bad-dev-name'],
      ['tcm-user/0/dev0', 'no-config'],
      ['tcm-user/0/dev0/', 'bad-subtype'],
      ['tcm-user/0/dev0//foo', 'bad-subtype'],
      ['tcm-user/0/dev0/;tcmur_cmd_time_out=1;file/x', 'bad-subtype'],
      ['tcm-user/0/dev0/file/;tcmur_cmd_time_out=abc;/x', 'bad-option'],
      ['tcm-user/0/dev0/file/;tcmur_cmd_time_out=;/x', 'bad-option'],
      ['tcm-user/0/dev0/file/;tcmur_cmd_time_out=-3;/x', 'bad-option'],
    ];
    for (const [name, problem] of bad) {
      it(`rejects ${JSON.stringify(name)} as ${problem}`, () => {
        try {
          parseUioName(name);
          expect.fail('parsed');
        } catch (e) {
          expect(e).to.be.instanceOf(UioNameError);
          expect((e as UioNameError).problem).to.equal(problem);
          expect((e as UioNameError).uioName).to.equal(name);
          expect((e as Error).message).to.contain(JSON.stringify(name));
        }
      });
    }
  });

  describe('parseMapSize', () => {
    it('reads the hex size the uio core prints', () => {
      expect(parseMapSize('0x0000000040800000')).to.equal(0x40800000);
      expect(parseMapSize('0x4800000\n')).to.equal(0x4800000);
    });
    it('rejects decimal, empty, zero and oversize values', () => {
      for (const s of ['1024', '', '0x', '0x0', 'zz', '0x1000000000000000', '0x12 34']) {
        expect(() => parseMapSize(s), s).to.throw(UioDeviceError);
      }
    });
  });

  describe('scanning a fake sysfs', () => {
    let root: string;
    beforeEach(async () => {
      root = await mkdtemp(join(tmpdir(), 'tcmu-uio-'));
    });
    afterEach(async () => {
      await rm(root, { recursive: true, force: true });
    });

    it('finds TCMU devices in minor order with paths under the root, skipping other uio devices', async () => {
      await fakeUio(root, 10, 'tcm-user/0/dev10/file//tmp/ten', '0x4800000');
      await fakeUio(root, 2, 'tcm-user/1/dev2/ram/;tcmur_cmd_time_out=9;size=1G');
      await fakeUio(root, 3, 'uio_hv_generic');
      await mkdir(join(root, 'sys', 'class', 'uio', 'not-a-uio'), { recursive: true });
      const { devices, errors } = await scanUioDevices({ root });
      expect(errors).to.deep.equal([]);
      expect(devices.map((d) => d.uio)).to.deep.equal(['uio2', 'uio10']);
      const [d2, d10] = devices;
      expect(d2).to.deep.include({ minor: 2, devPath: join(root, 'dev', 'uio2'), sysPath: join(root, 'sys', 'class', 'uio', 'uio2'), mapSize: 0x40800000 });
      expect(d2.name).to.deep.include({ hba: 1, devName: 'dev2', subtype: 'ram', cfgstring: 'size=1G', daemonOptions: { cmdTimeOut: 9 } });
      expect(d10).to.deep.include({ minor: 10, mapSize: 0x4800000 });
      expect(d10.name.cfgstring).to.equal('/tmp/ten');
    });

    it('reports malformed TCMU entries without losing the good ones', async () => {
      await fakeUio(root, 0, 'tcm-user/0/good/file/x');
      await fakeUio(root, 1, 'tcm-user/0/noconfig');
      await fakeUio(root, 4, 'tcm-user/0/nosize/file/x', null);
      await fakeUio(root, 5, 'tcm-user/0/badsize/file/x', 'garbage');
      const { devices, errors } = await scanUioDevices({ root });
      expect(devices.map((d) => d.name.devName)).to.deep.equal(['good']);
      expect(errors.map((e) => e.uio)).to.deep.equal(['uio1', 'uio4', 'uio5']);
      expect(errors[0].error).to.be.instanceOf(UioNameError);
      expect((errors[0].error as UioNameError).problem).to.equal('no-config');
      expect(errors[1].error).to.be.instanceOf(UioDeviceError);
      expect(errors[1].error.message).to.match(/uio4: cannot read .*map0.*size/);
      expect(errors[2].error.message).to.match(/not a hex number/);
    });

    it('gives an empty result when the uio class does not exist', async () => {
      expect(await scanUioDevices({ root })).to.deep.equal({ devices: [], errors: [] });
    });

    it('skips an entry whose name vanished (device removed during the scan)', async () => {
      await fakeUio(root, 7, null);
      expect(await scanUioDevices({ root })).to.deep.equal({ devices: [], errors: [] });
    });

    it('reads one device by minor or by name', async () => {
      await fakeUio(root, 3, 'tcm-user/0/d3/file/y');
      expect((await readUioDevice(3, { root })).name.devName).to.equal('d3');
      expect((await readUioDevice('uio3', { root })).minor).to.equal(3);
      await readUioDevice('uio4', { root }).then(() => expect.fail('read'), (e) => expect(e).to.be.instanceOf(UioDeviceError));
      await readUioDevice('sda', { root }).then(() => expect.fail('read'), (e) => expect(e).to.be.instanceOf(UioDeviceError));
    });
  });
});
