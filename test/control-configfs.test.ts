import { expect } from 'chai';
import { mkdtemp, mkdir, writeFile, readFile, rm, readdir, symlink, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  parseDeviceInfo, randomNaaWwn, validateUserBackstoreSpec, ConfigfsError, ConfigfsValueError, userDeviceDir,
  type UserBackstoreSpec,
} from '@tcmu-ts/core/control/configfs';
import {
  TcmuConfigfsDevice, createUserBackstore, deleteUserBackstore, createLoopExport, deleteLoopExport, readLunTarget,
  setNetlinkBlocked, resetNetlink, readModuleParam,
} from '@tcmu-ts/core/host/configfs';
import { scanUioDevices } from '@tcmu-ts/core/host/uio';
import { FakeKernelConfigfs, errno } from './fixtures/configfs-standin.js';

const INFO_61 = 'Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 128\n        Config: file//var/a b.img Size: 1073741824 MaxDataAreaMB: 1024 DataPagesPerBlk: 1 CmdRingSizeMB: 8\n';
const INFO_OLD = 'Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 4096  HwMaxSectors: 128\n        Config: NULL Size: 0 MaxDataAreaMB: 1024\n';

describe('control/configfs: LIO user backstores and tcm_loop', () => {
  let root: string;
  let k: FakeKernelConfigfs;
  const spec: UserBackstoreSpec = { hba: 0, name: 'dev0', devConfig: 'file//var/lib/d0.img', devSize: 1 << 30 };

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'tcmu-cfs-'));
    await mkdir(join(root, 'sys/kernel/config/target/core'), { recursive: true });
    await mkdir(join(root, 'sys/module/target_core_user/parameters'), { recursive: true });
    await writeFile(join(root, 'sys/module/target_core_user/parameters/block_netlink'), 'unblocked\n');
    await writeFile(join(root, 'sys/module/target_core_user/parameters/reset_netlink'), '');
    await writeFile(join(root, 'sys/module/target_core_user/parameters/global_max_data_area_mb'), '2048\n');
    k = new FakeKernelConfigfs(root);
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  describe('parseDeviceInfo', () => {
    it('finds " Size: " and not SectorSize, and a config with spaces', () => {
      expect(parseDeviceInfo(INFO_61)).to.deep.include({
        status: 'ACTIVATED', config: 'file//var/a b.img', size: 1073741824, maxDataAreaMb: 1024, dataPagesPerBlk: 1, cmdRingSizeMb: 8,
      });
    });
    it('reads an older kernel without the newer fields, and a NULL config', () => {
      const i = parseDeviceInfo(INFO_OLD);
      expect(i).to.deep.include({ config: '', size: 0, maxDataAreaMb: 1024 });
      expect(i).to.not.have.property('cmdRingSizeMb');
    });
  });

  describe('creating a user backstore', () => {
    it('writes the control keys one by one, then enable=1, and the UIO device appears', async () => {
      const dev = await createUserBackstore({ ...spec, hwBlockSize: 4096, maxDataAreaMb: 64, nlReplySupported: 1, unitSerial: 'abc-123' }, { root, io: k });
      expect(k.log).to.deep.equal([
        'mkdir sys/kernel/config/target/core/user_0',
        'mkdir sys/kernel/config/target/core/user_0/dev0',
        'write sys/kernel/config/target/core/user_0/dev0/control dev_config=file//var/lib/d0.img',
        'write sys/kernel/config/target/core/user_0/dev0/control dev_size=1073741824',
        'write sys/kernel/config/target/core/user_0/dev0/control hw_block_size=4096',
        'write sys/kernel/config/target/core/user_0/dev0/control max_data_area_mb=64',
        'write sys/kernel/config/target/core/user_0/dev0/control nl_reply_supported=1',
        'write sys/kernel/config/target/core/user_0/dev0/wwn/vpd_unit_serial abc-123',
        'write sys/kernel/config/target/core/user_0/dev0/enable 1',
      ]);
      expect(dev.path).to.equal(userDeviceDir(0, 'dev0', root));
      expect(await dev.isEnabled()).to.equal(true);
      const { devices } = await scanUioDevices({ root });
      expect(devices.map((d) => d.name.raw)).to.deep.equal(['tcm-user/0/dev0/file//var/lib/d0.img']);
      expect(TcmuConfigfsDevice.fromUio(devices[0].name, { root }).path).to.equal(dev.path);
    });

    it('reuses an existing hba directory', async () => {
      await createUserBackstore(spec, { root, io: k });
      k.log.length = 0;
      await createUserBackstore({ ...spec, name: 'dev1' }, { root, io: k });
      expect(k.log[0]).to.equal('mkdir sys/kernel/config/target/core/user_0/dev1');
    });

    it('rolls back the device and the hba it made when enabling fails', async () => {
      k.failEnable = 'EIO';
      await createUserBackstore(spec, { root, io: k }).then(() => expect.fail('created'), (e) => {
        expect(e).to.be.instanceOf(ConfigfsError);
        expect(e.code).to.equal('EIO');
        expect(e.op).to.equal('write');
        expect(e.path).to.match(/dev0\/enable$/);
      });
      expect(k.log.slice(-2)).to.deep.equal(['rmdir sys/kernel/config/target/core/user_0/dev0', 'rmdir sys/kernel/config/target/core/user_0']);
      expect(await readdir(join(root, 'sys/kernel/config/target/core'))).to.deep.equal([]);
    });

    it('reports a kernel refusal of a control key with its errno', async () => {
      await createUserBackstore({ ...spec, hwMaxSectors: 0x7fffffff }, { root, io: k });
      const dev = new TcmuConfigfsDevice(0, 'dev0', { root, io: k });
      await dev.control('max_data_area_mb', 8).then(() => expect.fail('written'), (e) => expect(e).to.be.instanceOf(ConfigfsError).and.include({ code: 'EINVAL' }));
    });

    it('validates the spec before touching anything', async () => {
      const bad: [Partial<UserBackstoreSpec>, RegExp][] = [
        [{ devConfig: 'file/a,b' }, /may not contain ','/],
        [{ devConfig: 'file/a\nb' }, /may not contain/],
        [{ devConfig: `file/${'x'.repeat(251)}` }, /1\.\.255 bytes/],
        [{ devConfig: '' }, /1\.\.255 bytes/],
        [{ devConfig: '/abs' }, /must start with "<subtype>\/"/],
        [{ name: '../etc' }, /device name/],
        [{ name: '' }, /device name/],
        [{ hba: -1 }, /hba/],
        [{ devSize: 0 }, /dev_size must be positive/],
        [{ devSize: 1000, hwBlockSize: 512 }, /not a multiple/],
        [{ hwBlockSize: 3000 }, /hw_block_size must be/],
        [{ maxDataAreaMb: 0 }, /max_data_area_mb/],
        [{ nlReplySupported: 200 }, /s8/],
        [{ qfullTimeOut: -2 }, /qfull_time_out/],
        [{ unitSerial: 'has space' }, /unit serial/],
      ];
      for (const [patch, re] of bad) {
        expect(() => validateUserBackstoreSpec({ ...spec, ...patch }), JSON.stringify(patch)).to.throw(ConfigfsValueError, re);
        await createUserBackstore({ ...spec, ...patch }, { root, io: k }).then(() => expect.fail('created'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      }
      expect(k.log).to.deep.equal([]);
      expect(validateUserBackstoreSpec({ ...spec, devConfig: 'ram', devSize: 4096n, hwBlockSize: 4096 })).to.equal(undefined);
    });
  });

  describe('a device', () => {
    let dev: TcmuConfigfsDevice;
    beforeEach(async () => {
      dev = await createUserBackstore({ ...spec, hwBlockSize: 4096, cmdTimeOut: 60 }, { root, io: k });
      k.log.length = 0;
    });

    it('reads its attributes', async () => {
      expect(await dev.readAttributes()).to.deep.equal({
        hwBlockSize: 4096, hwMaxSectors: 128, devSize: 1 << 30, emulateWriteCache: false, cmdTimeOut: 60, qfullTimeOut: -1,
        maxDataAreaMb: 1024, dataPagesPerBlk: 1, cmdRingSizeMb: 8, nlReplySupported: 0, tmrNotification: false,
        devConfig: 'file//var/lib/d0.img',
      });
      expect(await dev.readUnitSerial()).to.equal('');
      expect((await dev.readInfo()).size).to.equal(1 << 30);
    });

    it('falls back to info " Size: " and omits attributes an older kernel lacks', async () => {
      for (const f of ['dev_size', 'data_pages_per_blk', 'cmd_ring_size_mb', 'tmr_notification', 'dev_config']) await rm(join(dev.path, 'attrib', f));
      const a = await dev.readAttributes();
      expect(a.devSize).to.equal(1 << 30);
      expect(a).to.not.have.any.keys('dataPagesPerBlk', 'cmdRingSizeMb', 'tmrNotification', 'devConfig');
    });

    it('reports unreadable and malformed attributes', async () => {
      await writeFile(join(dev.path, 'attrib/hw_max_sectors'), 'lots\n');
      await dev.readAttributes().then(() => expect.fail('read'), (e) => {
        expect(e).to.be.instanceOf(ConfigfsError);
        expect(e.message).to.match(/hw_max_sectors.*not an integer/);
      });
      await dev.readIntAttribute('nope').then(() => expect.fail('read'), (e) => expect(e).to.be.instanceOf(ConfigfsError).and.include({ code: 'ENOENT' }));
    });

    it('blocks, unblocks and resets the ring through action/', async () => {
      expect(await dev.blockDevice(true)).to.equal(true);
      await dev.resetRing(1);
      await dev.resetRing(2);
      expect(await dev.blockDevice(false)).to.equal(true);
      await dev.freeKeptBuf(17);
      expect(k.log.map((l) => l.replace(/^write sys\/kernel\/config\/target\/core\/user_0\/dev0\//, ''))).to.deep.equal([
        'action/block_dev 1', 'action/reset_ring 1', 'action/reset_ring 2', 'action/block_dev 0', 'action/free_kept_buf 17',
      ]);
      await dev.resetRing(3 as 1).then(() => expect.fail('reset'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      await dev.freeKeptBuf(0).then(() => expect.fail('freed'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
    });

    it('says false for block_dev on a kernel without action/, as tcmu-runner treats ENOENT', async () => {
      await rm(join(dev.path, 'action'), { recursive: true });
      expect(await dev.blockDevice(true)).to.equal(false);
      await dev.resetRing(1).then(() => expect.fail('reset'), (e) => expect(e).to.include({ code: 'ENOENT' }));
    });

    it('lists and reads ALUA groups', async () => {
      await k.mkdir(join(dev.path, 'alua', 'ao_group'));
      await writeFile(join(dev.path, 'alua', 'ao_group', 'tg_pt_gp_id'), '7\n');
      expect(await dev.listAluaGroups()).to.deep.equal(['ao_group', 'default_tg_pt_gp']);
      expect(await dev.readAluaGroup('default_tg_pt_gp')).to.deep.equal({
        name: 'default_tg_pt_gp', tgPtGpId: 0, accessState: 0, accessType: 'Implicit and Explicit', preferred: 0, members: [],
      });
      expect(await dev.readAluaGroup('ao_group')).to.deep.equal({ name: 'ao_group', tgPtGpId: 7 });
      await dev.readAluaGroup('missing').then(() => expect.fail('read'), (e) => expect(e).to.include({ code: 'ENOENT' }));
      await rm(join(dev.path, 'alua'), { recursive: true });
      expect(await dev.listAluaGroups()).to.deep.equal([]);
    });

    it('refuses control values the kernel would split', async () => {
      await dev.control('dev_config', 'file/a,b').then(() => expect.fail('written'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      await dev.control('Bad-Key', 1).then(() => expect.fail('written'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      expect(k.log).to.deep.equal([]);
    });
  });

  describe('tcm_loop export', () => {
    const wwn = 'naa.5001405abcdef012';
    let dev: TcmuConfigfsDevice;
    beforeEach(async () => {
      dev = await createUserBackstore(spec, { root, io: k });
      k.log.length = 0;
    });

    it('makes WWN and TPG, sets the nexus, then links the LUN with an absolute target', async () => {
      const ex = await createLoopExport(dev, { wwn, initiatorWwn: 'naa.5001405000000001' });
      expect(k.log).to.deep.equal([
        'mkdir sys/kernel/config/target/loopback',
        `mkdir sys/kernel/config/target/loopback/${wwn}`,
        `mkdir sys/kernel/config/target/loopback/${wwn}/tpgt_1`,
        `write sys/kernel/config/target/loopback/${wwn}/tpgt_1/nexus naa.5001405000000001`,
        `mkdir sys/kernel/config/target/loopback/${wwn}/tpgt_1/lun/lun_0`,
        `symlink sys/kernel/config/target/loopback/${wwn}/tpgt_1/lun/lun_0/tcmu_0_dev0 -> sys/kernel/config/target/core/user_0/dev0`,
      ]);
      expect(ex).to.deep.include({ wwn, tpgt: 1, lun: 0, initiatorWwn: 'naa.5001405000000001' });
      expect(await readLunTarget(ex.linkPath)).to.deep.equal({ hba: 0, name: 'dev0' });
      // The device is pinned while exported.
      await deleteUserBackstore(0, 'dev0', { root, io: k }).then(() => expect.fail('deleted'), (e) => expect(e).to.include({ code: 'EBUSY' }));
    });

    it('tears down LUN links first, then the nexus, then TPG and WWN; then the device can go', async () => {
      await createLoopExport(dev, { wwn, lun: 3, linkName: 'mylink' });
      k.log.length = 0;
      await deleteLoopExport({ wwn }, { root, io: k });
      expect(k.log).to.deep.equal([
        `unlink sys/kernel/config/target/loopback/${wwn}/tpgt_1/lun/lun_3/mylink`,
        `rmdir sys/kernel/config/target/loopback/${wwn}/tpgt_1/lun/lun_3`,
        `write sys/kernel/config/target/loopback/${wwn}/tpgt_1/nexus NULL`,
        `rmdir sys/kernel/config/target/loopback/${wwn}/tpgt_1`,
        `rmdir sys/kernel/config/target/loopback/${wwn}`,
      ]);
      expect(k.nullNexusWithLinks).to.deep.equal([]);
      await deleteUserBackstore(0, 'dev0', { root, io: k, removeHbaIfEmpty: true });
      expect(await readdir(join(root, 'sys/kernel/config/target/core'))).to.deep.equal([]);
      // Everything already gone: nothing to do, no error.
      await deleteLoopExport({ wwn }, { root, io: k });
      await deleteUserBackstore(0, 'dev0', { root, io: k, removeHbaIfEmpty: true });
    });

    it('keeps the WWN while another TPG remains, and the hba while another device remains', async () => {
      await createLoopExport(dev, { wwn, tpgt: 1 });
      const dev1 = await createUserBackstore({ ...spec, name: 'dev1' }, { root, io: k });
      await createLoopExport(dev1, { wwn, tpgt: 2 });
      await deleteLoopExport({ wwn, tpgt: 1 }, { root, io: k });
      expect(await readdir(join(root, 'sys/kernel/config/target/loopback', wwn))).to.deep.equal(['tpgt_2']);
      await deleteUserBackstore(0, 'dev0', { root, io: k, removeHbaIfEmpty: true });
      expect(await readdir(join(root, 'sys/kernel/config/target/core/user_0'))).to.deep.equal(['dev1']);
    });

    it('checks WWNs and the nexus prefix', async () => {
      await createLoopExport(dev, { wwn: 'naa.123' }).then(() => expect.fail('made'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      await createLoopExport(dev, { wwn, initiatorWwn: 'iqn.2003-01.org.x' }).then(() => expect.fail('made'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      await createLoopExport(dev, { wwn, lun: -1 }).then(() => expect.fail('made'), (e) => expect(e).to.be.instanceOf(ConfigfsValueError));
      expect(k.log).to.deep.equal([]);
      for (let i = 0; i < 20; i++) expect(randomNaaWwn()).to.match(/^naa\.5001405[0-9a-f]{9}$/);
    });
  });

  describe('module parameters', () => {
    it('blocks and resets netlink as tcmu-runner does on restart', async () => {
      expect(await setNetlinkBlocked(true, { root, io: k })).to.equal(true);
      expect(await readModuleParam('block_netlink', { root })).to.equal('blocked');
      expect(await resetNetlink({ root, io: k })).to.equal(true);
      expect(await setNetlinkBlocked(false, { root, io: k })).to.equal(true);
      expect(await readModuleParam('global_max_data_area_mb', { root })).to.equal('2048');
      expect(k.log.map((l) => l.split('/').pop())).to.deep.equal(['block_netlink 1', 'reset_netlink 1', 'block_netlink 0']);
    });
    it('says false when the kernel has no such parameter', async () => {
      await rm(join(root, 'sys/module'), { recursive: true });
      expect(await setNetlinkBlocked(true, { root })).to.equal(false);
      expect(await resetNetlink({ root })).to.equal(false);
      expect(await readModuleParam('block_netlink', { root })).to.equal(undefined);
    });
  });

  describe('the default (node fs) io', () => {
    it('writes existing attributes with one write and never creates files', async () => {
      const dir = join(root, 'sys/kernel/config/target/core/user_5/d');
      await mkdir(join(dir, 'action'), { recursive: true });
      await writeFile(join(dir, 'action/block_dev'), 'unblocked\n');
      const dev = new TcmuConfigfsDevice(5, 'd', { root });
      expect(await dev.blockDevice(true)).to.equal(true);
      expect(await readFile(join(dir, 'action/block_dev'), 'utf8')).to.equal('1nblocked\n'); // a plain file is not truncated
      await dev.resetRing(1).then(() => expect.fail('written'), (e) => expect(e).to.be.instanceOf(ConfigfsError).and.include({ code: 'ENOENT' }));
      expect(await readdir(join(dir, 'action'))).to.deep.equal(['block_dev']);
    });
  });
});
