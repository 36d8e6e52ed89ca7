import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { SeekableDecoder, SeekableEncoder, SeekableFormatError, framesCovering, parseSeekTable } from './seekable-zstd.ts';
import { textPage, seededRandom } from './testing/synthetic-machine.ts';

function sample(): Buffer {
  const random = seededRandom(3);
  const pages = Array.from({ length: 64 }, (_, index) => (index % 3 === 0 ? randomBytes(4096) : textPage(random)));
  return Buffer.concat(pages).subarray(0, 64 * 4096 - 1000); // not a multiple of the frame size
}

test('encodes independent frames and a seek table that parses back', () => {
  const data = sample();
  const encoded = new SeekableEncoder(64 * 1024, 1).encode(data);
  const table = parseSeekTable(encoded.subarray(encoded.length - 200), encoded.length);
  assert.equal(table.entries.length, Math.ceil(data.length / 65536));
  assert.equal(table.decompressedSize, data.length);
  assert.equal(table.entries.at(-1)!.decompressedSize, data.length % 65536);
  assert.ok(table.entries.every((entry) => entry.checksum !== undefined));
  assert.deepEqual(new SeekableDecoder().decodeAll(encoded), data);
  assert.ok(encoded.length < data.length, 'text pages compress');
});

test('a range needs only the frames that cover it', () => {
  const data = sample();
  const encoded = new SeekableEncoder(64 * 1024, 1).encode(data);
  const table = parseSeekTable(encoded, encoded.length);
  assert.deepEqual(
    framesCovering(table, 65536 - 1, 2).map((entry) => entry.decompressedOffset),
    [0, 65536],
  );
  assert.deepEqual(
    framesCovering(table, 70000, 100).map((entry) => entry.decompressedOffset),
    [65536],
  );
  const decoder = new SeekableDecoder();
  const entry = table.entries[2];
  const frame = decoder.decodeFrame(entry, encoded.subarray(entry.compressedOffset, entry.compressedOffset + entry.compressedSize));
  assert.deepEqual(frame, data.subarray(entry.decompressedOffset, entry.decompressedOffset + entry.decompressedSize));
});

test('the zstd command line tool decompresses a seekable file (it skips the seek table)', () => {
  const data = sample();
  const encoded = new SeekableEncoder(64 * 1024, 3).encode(data);
  const result = spawnSync('zstd', ['-d', '-c', '-q'], { input: encoded, maxBuffer: 64 * 1024 * 1024 });
  assert.equal(result.status, 0, result.stderr?.toString());
  assert.deepEqual(result.stdout, data);
});

test('damage is detected: footer, sizes, frame contents', () => {
  const data = sample();
  const encoded = new SeekableEncoder(64 * 1024, 1).encode(data);
  const noMagic = Buffer.from(encoded);
  noMagic[noMagic.length - 1] ^= 0xff;
  assert.throws(() => parseSeekTable(noMagic, noMagic.length), SeekableFormatError);
  assert.throws(() => parseSeekTable(encoded, encoded.length + 1), /do not add up/);
  const table = parseSeekTable(encoded, encoded.length);
  const flipped = Buffer.from(encoded);
  flipped[table.entries[1].compressedOffset + 20] ^= 0x55;
  assert.throws(() => new SeekableDecoder().decodeAll(flipped), SeekableFormatError);
});
