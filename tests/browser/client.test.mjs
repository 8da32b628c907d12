// The learner client's protocol layer, without a browser: the built
// web/client/proctor_pb.js matches proto/proctor.proto, speaks the same
// bytes as protoc (the reference implementation), and 64-bit ids survive
// whether protobufjs hands them over as numbers or as Longs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';

import { SOURCE, webRequire } from './harness.mjs';

const WEB = join(SOURCE, 'web');
const PB = pathToFileURL(join(WEB, 'client', 'proctor_pb.js')).href;
const CLIENT = pathToFileURL(join(WEB, 'client', 'proctor-client.js')).href;
const CHALLENGE_ID = 1796340724201001; // ~1.8e15, as the daemon makes them

// protoc --encode / --decode with the project's proto.
function protoc(mode, type, input) {
    const r = spawnSync('protoc', [`--${mode}=${type}`, '-I', join(SOURCE, 'proto'),
                                   'proctor.proto'], { input });
    assert.equal(r.status, 0, String(r.stderr));
    return r.stdout;
}

test('proctor_pb.js is built from the current proto/proctor.proto', () => {
    const r = spawnSync(process.execPath, [join(WEB, 'tools', 'build-proto.mjs'), '--check'],
                        { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
});

test('messages match protoc byte for byte, and the runtime stays private', async () => {
    const had = 'protobuf' in globalThis;
    const { default: pb } = await import(PB);
    const v1 = pb.proctor.v1;
    assert.equal('protobuf' in globalThis, had, 'window.protobuf left as it was');

    const wire = protoc('encode', 'proctor.v1.ServerMessage',
                        `ack_seq: 7 challenge { challenge_id: ${CHALLENGE_ID} deadline_ms: 4000 }`);
    const msg = v1.ServerMessage.decode(wire);
    assert.equal(msg.body, 'challenge');
    assert.equal(msg.ackSeq, 7);
    assert.equal(msg.challenge.challengeId, CHALLENGE_ID);
    assert.equal(v1.Action[msg.challenge.action], 'NONE');

    const hb = v1.ClientMessage.encode({ seq: 3, heartbeat: {
        clientTimeMs: 1796340724201, pageVisible: true, windowFocused: true, inputEvents: 4,
        mediaPlaying: true, playbackRate: 1, mediaPositionS: 12.5, lessonId: 'lesson-1' } }).finish();
    const text = String(protoc('decode', 'proctor.v1.ClientMessage', Buffer.from(hb)));
    for (const line of ['seq: 3', 'client_time_ms: 1796340724201', 'page_visible: true',
                        'input_events: 4', 'playback_rate: 1', 'media_position_s: 12.5',
                        'lesson_id: "lesson-1"'])
        assert.ok(text.includes(line), `${line} in\n${text}`);
});

test('uint64 ids survive as numbers, Longs and BigInts', async () => {
    const { uint64ToJs } = await import(CLIENT);
    const Long = webRequire('long');

    assert.equal(uint64ToJs(CHALLENGE_ID), CHALLENGE_ID);
    assert.equal(uint64ToJs(Long.fromNumber(CHALLENGE_ID, true)), CHALLENGE_ID);
    assert.equal(uint64ToJs(BigInt(CHALLENGE_ID)), CHALLENGE_ID);
    // Past 2^53 a number would round: a decimal string instead.
    assert.equal(uint64ToJs(Long.fromString('18446744073709551615', true)),
                 '18446744073709551615');
    assert.equal(uint64ToJs(2n ** 60n), String(2n ** 60n));
    assert.equal(uint64ToJs(undefined), 0);
});

test('a page with long.js loaded gets Longs, and they go back unchanged', async () => {
    globalThis.Long = webRequire('long');
    try {
        // A second copy of the module, evaluated with the global Long.
        const { default: pb } = await import(PB + '?with-long');
        const { uint64ToJs } = await import(CLIENT);
        const v1 = pb.proctor.v1;
        const wire = protoc('encode', 'proctor.v1.ServerMessage',
                            `challenge { challenge_id: ${CHALLENGE_ID} }`);
        const id = v1.ServerMessage.decode(wire).challenge.challengeId;
        assert.equal(typeof id, 'object');
        assert.equal(uint64ToJs(id), CHALLENGE_ID);

        // The client echoes the id as it came; protoc reads the same number.
        const snap = v1.ClientMessage.encode({ seq: 1, snapshot: { challengeId: id,
                                                                   jpeg: new Uint8Array([0xff, 0xd8]) } }).finish();
        const text = String(protoc('decode', 'proctor.v1.ClientMessage', Buffer.from(snap)));
        assert.match(text, new RegExp(`challenge_id: ${CHALLENGE_ID}\\b`));
    } finally {
        delete globalThis.Long;
    }
});
