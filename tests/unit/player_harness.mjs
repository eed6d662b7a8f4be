// Runs the bundled player's outputs under node, on a recorded stream, with just enough of a
// browser faked around them (a MediaSource that keeps what is appended, a VideoDecoder that
// keeps what it is given), so that tests/unit/test_player_mux.py can check the bytes with a
// real decoder (PyAV).
//
//   node player_harness.mjs PLAYER JOB
//
// PLAYER: cxrelay/static/cxrelay.js. JOB: a JSON file {mode, codec, width, height, stream,
// frames: [[pts µs, size, key], ...], behind: [from, to], out}: the access units are `stream`'s
// bytes cut by `frames`, in decode order; while frames from <= i < to are fed, the browser says
// it is falling behind (3 s of buffer ahead of the playhead; 7 chunks in the decoder's queue).
// mode:
//   "mse"        feed MseOutput; `out` gets every appended byte, in order (an fMP4 file)
//   "webcodecs"  feed WebCodecsOutput; `out` gets JSON {configs: [{codec, description}],
//                chunks: [{type, timestamp, data}]} (bytes in hex)
//   "records"    `out` gets JSON: the decoder configuration record (hex, or null) the player
//                builds from each frame
// Prints one JSON line: {dropped, decoded, ...} from the output's stats.

import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [playerPath, jobPath] = process.argv.slice(2);
const job = JSON.parse(readFileSync(jobPath, 'utf8'));
const hex = (bytes) => Buffer.from(bytes).toString('hex');
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

// --- the browser, faked ---------------------------------------------------------------------

const appended = [];
class FakeSourceBuffer {
  constructor(type) {
    this.type = type;
    this.updating = false;
    this.onupdateend = null;
  }
  appendBuffer(data) {
    if (this.updating) throw new Error('appendBuffer while updating');
    appended.push(Buffer.from(data));
    this.updating = true;
    setTimeout(() => {
      this.updating = false;
      this.onupdateend?.();
    }, 0);
  }
  changeType(type) {
    this.type = type;
  }
  remove() {
    throw new Error('nothing is trimmed in a short recording');
  }
}

class FakeMediaSource {
  static isTypeSupported() {
    return true;
  }
  constructor() {
    this.readyState = 'open';
    this.types = [];
  }
  set onsourceopen(opened) {
    if (opened) setTimeout(opened, 0);
  }
  addSourceBuffer(type) {
    this.types.push(type);
    return new FakeSourceBuffer(type);
  }
  endOfStream() {}
}

const configs = [];
const chunks = [];
class FakeVideoDecoder {
  constructor() {
    this.state = 'unconfigured';
  }
  get decodeQueueSize() {
    return behind ? 7 : 0;
  }
  configure(config) {
    const description = config.description ? hex(config.description) : null;
    configs.push({ codec: config.codec, description });
    this.state = 'configured';
  }
  decode(chunk) {
    chunks.push({ type: chunk.type, timestamp: chunk.timestamp, data: hex(chunk.data) });
  }
  reset() {}
  close() {
    this.state = 'closed';
  }
}

globalThis.self = globalThis;
globalThis.HTMLElement = class {};
globalThis.customElements = { get: () => true };
globalThis.MediaSource = FakeMediaSource;
globalThis.VideoDecoder = FakeVideoDecoder;
globalThis.EncodedVideoChunk = class {
  constructor(init) {
    Object.assign(this, init);
  }
};
URL.createObjectURL = () => 'blob:harness';
URL.revokeObjectURL = () => {};

let behind = false;
const video = {
  get buffered() {
    const ahead = behind ? 5 : 0.1;
    return { length: 1, start: () => this.currentTime - 1, end: () => this.currentTime + ahead };
  },
  currentTime: 0,
  seeking: false,
  paused: true,
  play: () => Promise.resolve(),
  removeAttribute() {},
  load() {},
};
const canvas = { getContext: () => ({ drawImage() {} }) };

// --- the player's code, with its internals exported --------------------------------------------

const dir = mkdtempSync(join(tmpdir(), 'cxrelay-harness-'));
const module = join(dir, 'player.mjs');
writeFileSync(module, readFileSync(playerPath, 'utf8') +
  '\nexport { MseOutput, WebCodecsOutput, syntaxOf, splitNals };\n');
const player = await import(pathToFileURL(module).href);
rmSync(dir, { recursive: true });

// --- the job ---------------------------------------------------------------------------------

const stream = readFileSync(job.stream);
const frames = [];
let offset = 0;
for (const [pts, size, key] of job.frames) {
  frames.push({ key: !!key, catchup: false, pts, ingest: Date.now(),
    data: new Uint8Array(stream.subarray(offset, offset + size)) });
  offset += size;
}
const init = { codec: job.codec, width: job.width, height: job.height };

let output;
if (job.mode === 'records') {
  const syntax = player.syntaxOf(job.codec);
  const records = frames.map((frame) => {
    const record = syntax.config(player.splitNals(frame.data));
    return record && hex(record);
  });
  writeFileSync(job.out, JSON.stringify(records));
  console.log(JSON.stringify({}));
  process.exit(0);
} else if (job.mode === 'mse') {
  output = new player.MseOutput(video, (message) => {
    throw new Error('MseOutput failed: ' + message);
  });
} else {
  output = new player.WebCodecsOutput(canvas, (message) => {
    throw new Error('WebCodecsOutput failed: ' + message);
  });
}
if (!(await output.configure(init))) throw new Error('configure resolved false');
for (const [i, frame] of frames.entries()) {
  behind = job.behind[0] <= i && i < job.behind[1];
  output.feed(frame);
  // one append at a time, as a browser would finish them: the queue never looks backed up
  while (output._sourceBuffer?.updating || output._queue?.length) await tick();
}
if (job.mode === 'mse') writeFileSync(job.out, Buffer.concat(appended));
else writeFileSync(job.out, JSON.stringify({ configs, chunks }));
console.log(JSON.stringify(output.stats));
