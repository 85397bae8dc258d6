import { expect } from 'chai';
import { mkdtemp, mkdir, writeFile, readFile, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAdmin, ADMIN_COMMANDS, ADMIN_HELP, type ListedBackstore } from '@tcmu-ts/workers/cli/admin';
import { readLunTarget, createLoopExport, TcmuConfigfsDevice } from '@tcmu-ts/core/host/configfs';
import { naaDesignator } from '@tcmu-ts/core/scsi/inquiry';
import { FakeKernelConfigfs, makeKernelTree } from './fixtures/configfs-standin.js';

const CORE = 'sys/kernel/config/target/core';
const LOOP = 'sys/kernel/config/target/loopback';
const WWN = 'naa.5001405abcdef012';
const WWN2 = 'naa.5001405abcdef345';
const SERIAL = '0b1f3c2a-5d4e-4f60-8a7b-9c0d1e2f3a4b';

interface Run {
  code: number;
  out: string;
  err: string;
}

describe('tcmu-ts create / list / delete (admin CLI)', () => {
  let root: string;
  let k: FakeKernelConfigfs;

  /** How long create --loop waits for the disk; tests that expect one to appear raise it (the wait ends when it does). */
  let diskWaitMs = 400;
  async function run(...argv: string[]): Promise<Run> {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runAdmin(argv, { out: (s) => out.push(s), err: (s) => err.push(s) }, { root, configfsIo: k, diskWaitMs });
    return { code, out: out.join(''), err: err.join('') };
  }
  async function ok(...argv: string[]): Promise<string> {
    const r = await run(...argv);
    expect(r.err, argv.join(' ')).to.equal('');
    expect(r.code, argv.join(' ')).to.equal(0);
    return r.out;
  }
  /** A scsi_device entry as the kernel makes it once sd has probed a LUN. */
  async function fakeDisk(hctl: string, o: { vendor?: string; serial?: string; wwid?: string; block: string }): Promise<void> {
    const dev = join(root, 'sys/class/scsi_device', hctl, 'device');
    await mkdir(join(dev, 'block', o.block), { recursive: true });
    await writeFile(join(dev, 'vendor'), `${o.vendor ?? 'LIO-ORG '}\n`);
    if (o.serial !== undefined) {
      const s = Buffer.from(`${o.serial}\0`, 'latin1');
      await writeFile(join(dev, 'vpd_pg80'), Buffer.concat([Buffer.from([0, 0x80, s.length >> 8, s.length & 0xff]), s]));
    }
    if (o.wwid !== undefined) await writeFile(join(dev, 'wwid'), `${o.wwid}\n`);
  }

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'tcmu-admin-'));
    await makeKernelTree(root);
    k = new FakeKernelConfigfs(root);
    diskWaitMs = 400;
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  describe('commands and help', () => {
    it('exports the command names and an overview naming each', () => {
      expect(ADMIN_COMMANDS).to.deep.equal(['create', 'list', 'delete', 'reconfig']);
      for (const c of ADMIN_COMMANDS) expect(ADMIN_HELP).to.include(`tcmu-ts ${c}`);
    });

    it('prints each command\'s help on --help and -h, touching nothing', async () => {
      const create = await ok('create', '--help');
      expect(create).to.match(/^Usage: tcmu-ts create <name> <subtype>\/<config> --size <size> \[options\]\n/);
      for (const o of ['--size', '--hba', '--block-size', '--max-sectors', '--max-data-area-mb', '--cmd-time-out', '--serial', '--loop', '--loop-wwn']) {
        expect(create).to.include(`  ${o} `);
      }
      expect(await ok('create', 'x', '-h')).to.equal(create);
      expect(await ok('list', '--help')).to.match(/^Usage: tcmu-ts list \[--json\]\n[^]*--json/);
      expect(await ok('delete', '--help')).to.match(/^Usage: tcmu-ts delete <name> \[--hba <n>\]\n[^]*--hba <n>/);
      expect(k.log).to.deep.equal([]);
    });

    it('reconfig writes attrib/dev_config of the backstore, keeping its subtype', async () => {
      await ok('create', 'flt', 'fault/ram/1M', '--size', '1M');
      k.log.length = 0;
      expect(await ok('reconfig', 'flt', 'fault/ram/1M;error=EIO@0.01;latency=5')).to.equal('Reconfigured user_0/flt: fault/ram/1M;error=EIO@0.01;latency=5\n');
      expect(k.log).to.deep.equal([`write ${CORE}/user_0/flt/attrib/dev_config fault/ram/1M;error=EIO@0.01;latency=5`]);
      expect(await run('reconfig', 'flt', 'ram/1M')).to.include({ code: 1, err: 'tcmu-ts reconfig: user_0/flt is a fault backstore; the subtype cannot change (delete and create it again)\n' });
      expect(await run('reconfig', 'nosuch', 'ram/1M')).to.include({ code: 1 });
      expect((await run('reconfig', 'flt', 'fault/a,b')).code).to.equal(2);
      expect(await ok('reconfig', '--help')).to.match(/^Usage: tcmu-ts reconfig <name>/);
    });

    it('refuses an unknown command with the overview', async () => {
      const r = await run('frobnicate');
      expect(r.code).to.equal(2);
      expect(r.err).to.equal(`tcmu-ts: unknown command "frobnicate"\n${ADMIN_HELP}`);
    });
  });

  describe('create', () => {
    it('writes the control keys and attributes, enables the device and prints its uio', async () => {
      const out = await ok('create', 'dev0', 'file//var/lib/d0.img', '--size', '64M', '--block-size', '4096', '--max-sectors', '256',
        '--max-data-area-mb', '32', '--cmd-time-out', '60', '--serial', SERIAL);
      expect(out).to.equal('Created user_0/dev0: file//var/lib/d0.img, 67108864 bytes (64 MiB), block size 4096, uio0\n');
      const d = `${CORE}/user_0/dev0`;
      expect(k.log).to.deep.equal([
        `mkdir ${CORE}/user_0`,
        `mkdir ${d}`,
        `write ${d}/control dev_config=file//var/lib/d0.img`,
        `write ${d}/control dev_size=67108864`,
        `write ${d}/control hw_block_size=4096`,
        `write ${d}/control hw_max_sectors=256`,
        `write ${d}/control max_data_area_mb=32`,
        `write ${d}/attrib/cmd_time_out 60`,
        `write ${d}/wwn/vpd_unit_serial ${SERIAL}`,
        `write ${d}/enable 1`,
      ]);
      expect(await readFile(join(root, 'sys/class/uio/uio0/name'), 'utf8')).to.equal('tcm-user/0/dev0/file//var/lib/d0.img\n');
    });

    it('defaults to hba 0 and block size 512, and gives the unit a random UUID serial as targetcli does', async () => {
      expect(await ok('create', 'd', 'ram/1G', '--size', '1G')).to.equal('Created user_0/d: ram/1G, 1073741824 bytes (1 GiB), block size 512, uio0\n');
      expect(k.log).to.include(`write ${CORE}/user_0/d/control hw_block_size=512`);
      const serial = k.log.find((l) => l.startsWith(`write ${CORE}/user_0/d/wwn/vpd_unit_serial `))!.split(' ')[2];
      expect(serial).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      expect(await ok('create', 'e', 'ram/x', '--size', '4096', '--hba', '7')).to.equal('Created user_7/e: ram/x, 4096 bytes (4 KiB), block size 512, uio1\n');
      expect(k.log).to.include(`mkdir ${CORE}/user_7`);
    });

    it('sizes parse like the handlers\' parseSize: plain bytes, k/M/G/T, fractions', async () => {
      await ok('create', 'a', 'ram/a', '--size', '1.5k');
      await ok('create', 'b', 'ram/b', '--size', '2TiB', '--block-size', '4096');
      expect(k.log).to.include(`write ${CORE}/user_0/a/control dev_size=1536`);
      expect(k.log).to.include(`write ${CORE}/user_0/b/control dev_size=${2 * 2 ** 40}`);
    });

    it('with --loop, exports it through tcm_loop and says when no disk shows up (fake tree)', async () => {
      const out = await ok('create', 'dev0', 'file//var/lib/d0.img', '--size', '1G', '--serial', SERIAL, '--loop', '--loop-wwn', WWN);
      const link = `${LOOP}/${WWN}/tpgt_1/lun/lun_0/tcmu_0_dev0`;
      expect(out).to.equal([
        'Created user_0/dev0: file//var/lib/d0.img, 1073741824 bytes (1 GiB), block size 512, uio0',
        `Exported through tcm_loop: /${link}`,
        "No SCSI disk found for it yet (the tcmu-ts daemon must be running to answer the kernel's scan)",
        '',
      ].join('\n'));
      const loopLog = k.log.slice(k.log.indexOf(`write ${CORE}/user_0/dev0/enable 1`) + 1);
      expect(loopLog.map((l) => l.replace(/nexus naa\.5001405[0-9a-f]{9}$/, 'nexus <initiator>'))).to.deep.equal([
        `mkdir ${LOOP}`,
        `mkdir ${LOOP}/${WWN}`,
        `mkdir ${LOOP}/${WWN}/tpgt_1`,
        `write ${LOOP}/${WWN}/tpgt_1/nexus <initiator>`,
        `mkdir ${LOOP}/${WWN}/tpgt_1/lun/lun_0`,
        `symlink ${link} -> ${CORE}/user_0/dev0`,
      ]);
      expect(await readLunTarget(join(root, link))).to.deep.equal({ hba: 0, name: 'dev0' });
    });

    it('with --loop and no --loop-wwn, makes a random LIO naa WWN', async () => {
      const out = await ok('create', 'dev0', 'ram/x', '--size', '1M', '--loop');
      expect(out).to.match(/Exported through tcm_loop: \/sys\/kernel\/config\/target\/loopback\/naa\.5001405[0-9a-f]{9}\/tpgt_1\/lun\/lun_0\/tcmu_0_dev0\n/);
      expect(await readdir(join(root, LOOP))).to.have.length(1);
    });

    it('waits for the sd device and finds it by vendor and VPD page 80h serial', async () => {
      await fakeDisk('0:0:0:0', { vendor: 'ATA     ', serial: SERIAL, block: 'sda' });
      await fakeDisk('1:0:1:0', { serial: 'some-other-lio-disk', block: 'sdb' });
      // As the kernel does: linking the LUN starts the scan, and sd shows up some time after.
      const link = k.symlink.bind(k);
      k.symlink = async (target, p) => {
        await link(target, p);
        void fakeDisk('2:0:1:0', { serial: SERIAL, block: 'sdc' });
      };
      diskWaitMs = 30_000;
      const out = await ok('create', 'dev0', 'ram/x', '--size', '1M', '--serial', SERIAL, '--loop', '--loop-wwn', WWN);
      expect(out.split('\n').slice(-2)).to.deep.equal(['SCSI disk: /dev/sdc', '']);
    });

    it('finds the sd device by its wwid (NAA from the serial) when sysfs has no vpd_pg80', async () => {
      const wwid = `naa.${Buffer.from(naaDesignator(SERIAL)).toString('hex')}`;
      await fakeDisk('3:0:1:0', { wwid, block: 'sdd' });
      const out = await ok('create', 'dev0', 'ram/x', '--size', '1M', '--serial', SERIAL, '--loop', '--loop-wwn', WWN);
      expect(out).to.include('SCSI disk: /dev/sdd\n');
    });

    describe('refuses bad input before touching configfs, with a clear message', () => {
      const cases: [string, string[], string][] = [
        ['a bad name', ['create', 'bad/name', 'file//x', '--size', '1M'], 'invalid backstore name "bad/name": use letters, digits and _ . : -'],
        ['the name ..', ['create', '..', 'file//x', '--size', '1M'], 'invalid backstore name "..": use letters, digits and _ . : -'],
        ['a config without subtype (leading /)', ['create', 'd', '/var/lib/d.img', '--size', '1M'],
          'config "/var/lib/d.img" has no handler subtype: write it as <subtype>/<config>, e.g. file//var/lib/disk.img'],
        ['a config without subtype (no /)', ['create', 'd', 'disk.img', '--size', '1M'],
          'config "disk.img" has no handler subtype: write it as <subtype>/<config>, e.g. file//var/lib/disk.img'],
        ['a config with a comma', ['create', 'd', 'file//a,b', '--size', '1M'],
          'config "file//a,b" may not contain \',\' or a newline (the kernel splits control writes on them)'],
        ['a config over 255 bytes', ['create', 'd', `file/${'x'.repeat(251)}`, '--size', '1M'], 'config is 256 bytes; the kernel takes at most 255'],
        ['no size', ['create', 'd', 'file//x'], '--size is required (bytes, or with a unit: 64M, 1G)'],
        ['a size that is not one', ['create', 'd', 'file//x', '--size', 'lots'], '--size "lots" is not a size (bytes, or with a unit: 64M, 1G)'],
        ['a zero size', ['create', 'd', 'file//x', '--size', '0'], '--size must be more than 0'],
        ['a size not a multiple of the block size', ['create', 'd', 'file//x', '--size', '1000'], '--size 1000 (1000 bytes) is not a multiple of the block size 512'],
        ['a size not a multiple of a given block size', ['create', 'd', 'file//x', '--size', '1.5k', '--block-size', '1024'],
          '--size 1.5k (1536 bytes) is not a multiple of the block size 1024'],
        ['a bad block size', ['create', 'd', 'file//x', '--size', '1M', '--block-size', '3000'], '--block-size must be 512, 1024, 2048 or 4096, got "3000"'],
        ['a bad hba', ['create', 'd', 'file//x', '--size', '1M', '--hba=-1'], '--hba must be a number from 0 to 4294967295, got "-1"'],
        ['zero max sectors', ['create', 'd', 'file//x', '--size', '1M', '--max-sectors', '0'], '--max-sectors must be a positive number of blocks, got "0"'],
        ['a bad data area', ['create', 'd', 'file//x', '--size', '1M', '--max-data-area-mb', '1.5'], '--max-data-area-mb must be a positive number of MiB, got "1.5"'],
        ['a bad cmd time out', ['create', 'd', 'file//x', '--size', '1M', '--cmd-time-out', 'soon'], '--cmd-time-out must be a whole number of seconds (0: never), got "soon"'],
        ['a serial with a space', ['create', 'd', 'file//x', '--size', '1M', '--serial', 'a b'], '--serial must be 1 to 254 printable ASCII characters without spaces'],
        ['--loop-wwn without --loop', ['create', 'd', 'file//x', '--size', '1M', '--loop-wwn', WWN], '--loop-wwn needs --loop'],
        ['a bad loop WWN', ['create', 'd', 'file//x', '--size', '1M', '--loop', '--loop-wwn', 'naa.123'], '--loop-wwn "naa.123" must be naa.<16 hex digits>, e.g. naa.5001405abcdef012'],
        ['a missing config', ['create', 'd', '--size', '1M'], 'needs <name> and <subtype>/<config>'],
        ['an extra argument', ['create', 'd', 'file//x', 'more', '--size', '1M'], 'unexpected argument "more"'],
        ['an unknown option', ['create', 'd', 'file//x', '--size', '1M', '--frob'], 'unknown option --frob'],
      ];
      for (const [what, argv, msg] of cases) {
        it(what, async () => {
          const r = await run(...argv);
          expect(r).to.deep.equal({ code: 2, out: '', err: `tcmu-ts create: ${msg}\nTry 'tcmu-ts create --help'.\n` });
          expect(k.log).to.deep.equal([]);
        });
      }
    });

    it('says how to load target_core_user when it is missing', async () => {
      await rm(join(root, 'sys/module'), { recursive: true });
      expect(await run('create', 'd', 'file//x', '--size', '1M')).to.deep.equal({
        code: 1, out: '', err: 'tcmu-ts create: target_core_user is not loaded: modprobe target_core_user\n',
      });
      expect(k.log).to.deep.equal([]);
    });

    it('says how to mount configfs when it is missing', async () => {
      await rm(join(root, 'sys/kernel/config/target'), { recursive: true });
      const msg = 'configfs is not mounted at /sys/kernel/config (there is no /sys/kernel/config/target): mount -t configfs none /sys/kernel/config';
      expect(await run('create', 'd', 'file//x', '--size', '1M')).to.deep.equal({ code: 1, out: '', err: `tcmu-ts create: ${msg}\n` });
      expect(await run('list')).to.deep.equal({ code: 1, out: '', err: `tcmu-ts list: ${msg}\n` });
      expect(await run('delete', 'd')).to.deep.equal({ code: 1, out: '', err: `tcmu-ts delete: ${msg}\n` });
      expect(k.log).to.deep.equal([]);
    });

    it('refuses a duplicate name in the same hba, but not in another', async () => {
      await ok('create', 'dev0', 'ram/x', '--size', '1M');
      k.log.length = 0;
      expect(await run('create', 'dev0', 'ram/y', '--size', '2M')).to.deep.equal({
        code: 1, out: '', err: 'tcmu-ts create: a user backstore named "dev0" already exists in user_0\n',
      });
      expect(k.log).to.deep.equal([]);
      await ok('create', 'dev0', 'ram/y', '--size', '2M', '--hba', '1');
    });

    it('refuses a --loop-wwn whose TPG already exists', async () => {
      await ok('create', 'dev0', 'ram/x', '--size', '1M', '--loop', '--loop-wwn', WWN);
      k.log.length = 0;
      expect(await run('create', 'dev1', 'ram/x', '--size', '1M', '--loop', '--loop-wwn', WWN)).to.deep.equal({
        code: 1, out: '', err: `tcmu-ts create: the tcm_loop target ${WWN} already has tpgt_1: pick another --loop-wwn, or leave it out for a random one\n`,
      });
      expect(k.log).to.deep.equal([]);
    });

    it('reports a kernel refusal to enable, with the path as the kernel shows it, and leaves nothing behind', async () => {
      k.failEnable = 'EIO';
      const r = await run('create', 'dev0', 'ram/x', '--size', '1M');
      expect(r.code).to.equal(1);
      expect(r.err).to.equal(`tcmu-ts create: cannot create user_0/dev0: write /${CORE}/user_0/dev0/enable: EIO`
        + ' (the kernel refused to enable it; the tcmu-ts daemon log says why if the daemon refused it)\n');
      expect(await readdir(join(root, CORE))).to.deep.equal([]);
    });

    it('removes the backstore again when the tcm_loop export fails', async () => {
      const real = k.symlink.bind(k);
      k.symlink = async () => {
        throw Object.assign(new Error('ENODEV'), { code: 'ENODEV' });
      };
      const r = await run('create', 'dev0', 'ram/x', '--size', '1M', '--loop', '--loop-wwn', WWN);
      k.symlink = real;
      expect(r.code).to.equal(1);
      expect(r.err).to.equal(`tcmu-ts create: cannot export user_0/dev0 through tcm_loop: symlink /${LOOP}/${WWN}/tpgt_1/lun/lun_0/tcmu_0_dev0: ENODEV; removed user_0/dev0 again\n`);
      expect(await readdir(join(root, CORE))).to.deep.equal([]);
      expect(await readdir(join(root, LOOP))).to.deep.equal([]);
    });
  });

  describe('list', () => {
    beforeEach(async () => {
      await ok('create', 'dev0', 'file//var/lib/d0.img', '--size', '1G', '--serial', SERIAL, '--loop', '--loop-wwn', WWN);
      await ok('create', 'scratch', 'ram/64M', '--size', '64M', '--block-size', '4096', '--hba', '2', '--serial', 'scratch-1');
      await fakeDisk('4:0:1:0', { serial: SERIAL, block: 'sdb' });
    });

    it('prints every backstore with config, size, block size, state, uio and exports', async () => {
      expect(await ok('list')).to.equal([
        'user_0/dev0',
        '  config:   file//var/lib/d0.img',
        '  size:     1073741824 bytes (1 GiB)',
        '  block:    512',
        '  enabled:  yes',
        '  uio:      uio0 (/dev/uio0)',
        `  export:   loopback ${WWN} tpgt_1 lun_0 -> /dev/sdb`,
        'user_2/scratch',
        '  config:   ram/64M',
        '  size:     67108864 bytes (64 MiB)',
        '  block:    4096',
        '  enabled:  yes',
        '  uio:      uio1 (/dev/uio1)',
        '  exports:  none',
        '',
      ].join('\n'));
    });

    it('prints JSON with --json', async () => {
      const list = JSON.parse(await ok('list', '--json')) as ListedBackstore[];
      expect(list).to.deep.equal([
        {
          hba: 0, name: 'dev0', path: `/${CORE}/user_0/dev0`, enabled: true, config: 'file//var/lib/d0.img', size: 2 ** 30, blockSize: 512,
          maxSectors: 128, serial: SERIAL, uio: { name: 'uio0', device: '/dev/uio0', mapSize: 0x40800000 },
          exports: [{ fabric: 'loopback', wwn: WWN, tpgt: 1, lun: 0, link: `/${LOOP}/${WWN}/tpgt_1/lun/lun_0/tcmu_0_dev0`, disk: '/dev/sdb' }],
        },
        {
          hba: 2, name: 'scratch', path: `/${CORE}/user_2/scratch`, enabled: true, config: 'ram/64M', size: 64 * 2 ** 20, blockSize: 4096,
          maxSectors: 128, serial: 'scratch-1', uio: { name: 'uio1', device: '/dev/uio1', mapSize: 0x40800000 }, exports: [],
        },
      ]);
    });

    it('shows a device made but not enabled (no uio, no config yet)', async () => {
      await k.mkdir(join(root, CORE, 'user_2', 'half'));
      const list = JSON.parse(await ok('list', '--json')) as ListedBackstore[];
      expect(list.map((b) => b.name)).to.deep.equal(['dev0', 'half', 'scratch']);
      expect(list[1]).to.deep.include({ enabled: false, config: null, size: 0, uio: null, serial: null, exports: [] });
      expect(await ok('list')).to.include('user_2/half\n  config:   ?\n  size:     0 bytes\n  block:    0\n  enabled:  no\n  uio:      none\n');
    });

    it('lists nothing on a machine without backstores', async () => {
      await ok('delete', 'dev0');
      await ok('delete', 'scratch');
      expect(await ok('list')).to.equal('No user backstores.\n');
      expect(await ok('list', '--json')).to.equal('[]\n');
    });

    it('refuses arguments', async () => {
      expect(await run('list', 'dev0')).to.deep.equal({ code: 2, out: '', err: 'tcmu-ts list: unexpected argument "dev0"\nTry \'tcmu-ts list --help\'.\n' });
    });
  });

  describe('delete', () => {
    it('unlinks the LUN, removes its directory, drops the nexus, removes TPG and WWN, then the device and its empty hba', async () => {
      await ok('create', 'dev0', 'file//var/lib/d0.img', '--size', '1G', '--loop', '--loop-wwn', WWN);
      k.log.length = 0;
      const out = await ok('delete', 'dev0');
      const tpg = `${LOOP}/${WWN}/tpgt_1`;
      expect(k.log).to.deep.equal([
        `unlink ${tpg}/lun/lun_0/tcmu_0_dev0`,
        `rmdir ${tpg}/lun/lun_0`,
        `write ${tpg}/nexus NULL`,
        `rmdir ${tpg}`,
        `rmdir ${LOOP}/${WWN}`,
        `rmdir ${CORE}/user_0/dev0`,
        `rmdir ${CORE}/user_0`,
      ]);
      expect(k.nullNexusWithLinks).to.deep.equal([]);
      expect(out).to.equal([
        `Removed tcm_loop LUN /${tpg}/lun/lun_0/tcmu_0_dev0`,
        `Removed tcm_loop target ${WWN} tpgt_1`,
        'Deleted user_0/dev0',
        '',
      ].join('\n'));
      expect(await readdir(join(root, CORE))).to.deep.equal([]);
      expect(await readdir(join(root, 'sys/class/uio'))).to.deep.equal([]);
    });

    it('removes only its own LUN from a TPG shared with another device, and keeps the hba while a device is left', async () => {
      await ok('create', 'dev0', 'ram/a', '--size', '1M', '--loop', '--loop-wwn', WWN);
      await ok('create', 'dev1', 'ram/b', '--size', '1M');
      const tpg = `${LOOP}/${WWN}/tpgt_1`;
      await k.mkdir(join(root, tpg, 'lun/lun_1'));
      await k.symlink(join(root, CORE, 'user_0/dev1'), join(root, tpg, 'lun/lun_1/tcmu_0_dev1'));
      k.log.length = 0;
      expect(await ok('delete', 'dev0', '--hba', '0')).to.equal(`Removed tcm_loop LUN /${tpg}/lun/lun_0/tcmu_0_dev0\nDeleted user_0/dev0\n`);
      expect(k.log).to.deep.equal([`unlink ${tpg}/lun/lun_0/tcmu_0_dev0`, `rmdir ${tpg}/lun/lun_0`, `rmdir ${CORE}/user_0/dev0`]);
      k.log.length = 0;
      await ok('delete', 'dev1');
      expect(k.log).to.deep.equal([
        `unlink ${tpg}/lun/lun_1/tcmu_0_dev1`, `rmdir ${tpg}/lun/lun_1`, `write ${tpg}/nexus NULL`, `rmdir ${tpg}`, `rmdir ${LOOP}/${WWN}`,
        `rmdir ${CORE}/user_0/dev1`, `rmdir ${CORE}/user_0`,
      ]);
      expect(k.nullNexusWithLinks).to.deep.equal([]);
    });

    it('removes every tcm_loop export of the device, in two TPGs', async () => {
      await ok('create', 'dev0', 'ram/a', '--size', '1M', '--loop', '--loop-wwn', WWN);
      const dev = new TcmuConfigfsDevice(0, 'dev0', { root, io: k });
      await createLoopExport(dev, { wwn: WWN2, lun: 2 }, { root, io: k });
      k.log.length = 0;
      await ok('delete', 'dev0');
      expect(k.log.filter((l) => l.startsWith('unlink') || l.includes('nexus'))).to.deep.equal([
        `unlink ${LOOP}/${WWN}/tpgt_1/lun/lun_0/tcmu_0_dev0`, `write ${LOOP}/${WWN}/tpgt_1/nexus NULL`,
        `unlink ${LOOP}/${WWN2}/tpgt_1/lun/lun_2/tcmu_0_dev0`, `write ${LOOP}/${WWN2}/tpgt_1/nexus NULL`,
      ]);
      expect(await readdir(join(root, LOOP))).to.deep.equal([]);
      expect(await readdir(join(root, CORE))).to.deep.equal([]);
    });

    it('refuses a device exported through another fabric, changing nothing', async () => {
      await ok('create', 'dev0', 'ram/a', '--size', '1M');
      const iqn = 'iqn.2003-01.org.linux-iscsi.host.x8664:sn.0123456789ab';
      await mkdir(join(root, 'sys/kernel/config/target/iscsi', iqn, 'tpgt_1/lun/lun_0'), { recursive: true });
      await k.symlink(join(root, CORE, 'user_0/dev0'), join(root, 'sys/kernel/config/target/iscsi', iqn, 'tpgt_1/lun/lun_0/x'));
      k.log.length = 0;
      expect(await run('delete', 'dev0')).to.deep.equal({
        code: 1, out: '', err: `tcmu-ts delete: user_0/dev0 is exported through iscsi ${iqn} tpgt_1 lun_0: remove that export first (tcmu-ts only removes tcm_loop exports)\n`,
      });
      expect(k.log).to.deep.equal([]);
    });

    it('finds the hba by name, and asks for --hba when two have it', async () => {
      await ok('create', 'dev0', 'ram/a', '--size', '1M', '--hba', '3');
      await ok('delete', 'dev0');
      expect(await readdir(join(root, CORE))).to.deep.equal([]);
      await ok('create', 'dev0', 'ram/a', '--size', '1M', '--hba', '1');
      await ok('create', 'dev0', 'ram/a', '--size', '1M', '--hba', '2');
      expect(await run('delete', 'dev0')).to.deep.equal({ code: 1, out: '', err: 'tcmu-ts delete: "dev0" exists in user_1, user_2: say which with --hba\n' });
      expect(await ok('delete', 'dev0', '--hba', '2')).to.equal('Deleted user_2/dev0\n');
      expect(await readdir(join(root, CORE))).to.deep.equal(['user_1']);
    });

    it('says so for a device that does not exist', async () => {
      await ok('create', 'dev0', 'ram/a', '--size', '1M');
      k.log.length = 0;
      expect(await run('delete', 'nope')).to.deep.equal({ code: 1, out: '', err: 'tcmu-ts delete: no user backstore named "nope"\n' });
      expect(await run('delete', 'dev0', '--hba', '3')).to.deep.equal({ code: 1, out: '', err: 'tcmu-ts delete: no user backstore named "dev0" in user_3\n' });
      expect(k.log).to.deep.equal([]);
    });

    it('refuses bad arguments', async () => {
      const usage = (cmd: string, msg: string) => ({ code: 2, out: '', err: `tcmu-ts ${cmd}: ${msg}\nTry 'tcmu-ts ${cmd} --help'.\n` });
      expect(await run('delete')).to.deep.equal(usage('delete', 'needs <name>'));
      expect(await run('delete', 'a/b')).to.deep.equal(usage('delete', 'invalid backstore name "a/b": use letters, digits and _ . : -'));
      expect(await run('delete', 'a', 'b')).to.deep.equal(usage('delete', 'unexpected argument "b"'));
      expect(await run('delete', 'a', '--hba', 'x')).to.deep.equal(usage('delete', '--hba must be a number from 0 to 4294967295, got "x"'));
    });

    it('reports the kernel refusing the rmdir (a daemon answering REMOVED_DEVICE with an error)', async () => {
      await ok('create', 'dev0', 'ram/a', '--size', '1M');
      const real = k.rmdir.bind(k);
      k.rmdir = async () => {
        throw Object.assign(new Error('EBUSY'), { code: 'EBUSY' });
      };
      const r = await run('delete', 'dev0');
      k.rmdir = real;
      expect(r).to.deep.equal({ code: 1, out: '', err: `tcmu-ts delete: rmdir /${CORE}/user_0/dev0: EBUSY\n` });
    });
  });
});
