import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameDecoder, encodeFrame, encodeExecRequest, decodeExecRequest, FrameType } from './protocol.ts';

test('frames survive being split at every byte', () => {
  const bytes = Buffer.concat([encodeFrame(FrameType.stdout, 7, Buffer.from('hello')), encodeFrame(FrameType.exit, 7, Buffer.alloc(8))]);
  for (let split = 0; split <= bytes.length; split++) {
    const decoder = new FrameDecoder();
    const frames = [...decoder.push(bytes.subarray(0, split)), ...decoder.push(bytes.subarray(split))];
    assert.deepEqual(frames.map((frame) => [frame.type, frame.stream, frame.payload.toString()]), [
      [FrameType.stdout, 7, 'hello'],
      [FrameType.exit, 7, '\0'.repeat(8)],
    ]);
  }
});

test('the decoder skips garbage before a frame (lost bytes at boot)', () => {
  const decoder = new FrameDecoder();
  const frames = decoder.push(Buffer.concat([Buffer.from('\x00\x13TP garbage TPR'), encodeFrame(FrameType.hello, 1, Buffer.from([1, 0, 0, 0]))]));
  assert.equal(frames.length, 1);
  assert.equal(frames[0]!.type, FrameType.hello);
});

test('exec requests round-trip, and NUL bytes in arguments are refused', () => {
  const request = { argv: ['sh', '-c', 'echo "a b"'], env: ['A=1', 'B=two words'], workingDirectory: '/tmp', user: '1000:1000', tty: true, stdin: true, rows: 40, columns: 120 };
  assert.deepEqual(decodeExecRequest(encodeExecRequest(request)), request);
  assert.throws(() => encodeExecRequest({ ...request, argv: ['a\0b'] }), /NUL/);
});

test('oversized payloads are refused before they reach the wire', () => {
  assert.throws(() => encodeFrame(FrameType.stdout, 1, Buffer.alloc((1 << 20) + 1)), /exceeds/);
});
