/**
 * cxrelay.js — the <cxrelay-player> custom element (protocol v1, see docs/protocol.md).
 *
 * Whole embed, no build step, no dependencies:
 *
 *   <script type="module" src="https://edge-box:8443/cxrelay.js"></script>
 *   <cxrelay-player camera="lobby"></cxrelay-player>
 *
 * Attributes (changing any of them reconnects):
 *   camera   camera name as configured in the relay
 *   server   relay base URL, e.g. "wss://edge-box:8443" (http/https are turned into ws/wss).
 *            Default: the place this script was loaded from, so a page on another site works.
 *   src      full WebSocket URL, e.g. "wss://edge-box:8443/ws/lobby"; wins over camera/server
 *   token    viewer token, sent as ?token=…
 *
 * Read-only properties:
 *   state    'idle' (not streaming: hidden, off-screen or detached) | 'connecting' | 'live' |
 *            'offline' | 'error'
 *   reason   human-readable reason for the state, or ''
 *   stats    {mode: 'webcodecs'|'mse'|null, codec, width, height, fps, bitrate (bit/s),
 *            decoded, dropped (skipped to keep latency down), painted,
 *            latency (ms, Date.now() − relay ingest time)}
 *
 * Events:
 *   statechange  detail {state, reason}
 *   error        detail {message}  (codec not playable, decoder or MSE failure)
 *
 * Styling: size it like a <video> (CSS width/height; with only a width the camera's aspect ratio
 * is kept). Shadow parts: ::part(canvas), ::part(video), ::part(overlay), ::part(message).
 *
 * Playback: WebCodecs VideoDecoder (secure contexts) painting the newest frame on a canvas in
 * requestAnimationFrame; otherwise Media Source Extensions with a tiny fragmented-MP4 muxer.
 * Catch-up frames (flag 0x02) are decoded but never painted; when decoding falls behind, delta
 * frames are dropped up to the next keyframe so latency never drifts.
 */

const HDR = 17; // binary header: flags u8, pts i64 µs, ingest u64 µs
const KEY = 1;
const CATCHUP = 2;
const QUEUE_MAX = 6; // decode queue bound (frames) before dropping to the next keyframe
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 10000;
const MS = self.ManagedMediaSource || self.MediaSource;
const mimeOf = (codec) => `video/mp4; codecs="${codec}"`;

const CSS = `:host{display:inline-block;position:relative;overflow:hidden;background:#000;
width:300px;aspect-ratio:16/9;vertical-align:top;contain:content}
:host([hidden]){display:none}
canvas,video{position:absolute;inset:0;width:100%;height:100%;object-fit:contain;display:block}
[hidden]{display:none!important}
.ov{position:absolute;left:6px;bottom:6px;max-width:calc(100% - 24px);padding:1px 7px;
border-radius:4px;background:#0009;color:#fff;font:12px/1.5 system-ui,sans-serif;
white-space:nowrap;overflow:hidden;text-overflow:ellipsis;pointer-events:none}
.ov[data-s=live]:before{content:"● ";color:#f44}
.ov[data-s=error]{background:#a00c}
.msg{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;
padding:1em;color:#fff;background:#000c;font:14px/1.4 system-ui,sans-serif;text-align:center}`;

export class CxrelayPlayer extends HTMLElement {
  static get observedAttributes() {
    return ['camera', 'server', 'src', 'token'];
  }

  constructor() {
    super();
    this._state = 'idle';
    this._reason = '';
    this._on = false; // streaming wanted (connected, visible, on screen)
    this._inView = false;
    this._gen = 0; // bumped on every stop: async work from an older run must not touch anything
    this._backoff = BACKOFF_MIN;
    this._mode = null;
    this._decoded = this._dropped = this._painted = 0;
    this._lat = 0;
    this._w0 = this._wf = this._wb = this._fps = this._bps = this._last = 0;
    this._check = this._check.bind(this);
    this._paint = this._paint.bind(this);
  }

  // --- public API ---------------------------------------------------------------------------

  get state() {
    return this._state;
  }

  get reason() {
    return this._reason;
  }

  get stats() {
    const stale = performance.now() - this._last > 2000;
    const mse = this._mode === 'mse' && this._v.getVideoPlaybackQuality?.();
    const i = this._init || {};
    return {
      mode: this._mode,
      codec: i.codec || null,
      width: i.width || 0,
      height: i.height || 0,
      fps: stale ? 0 : Math.round(this._fps * 10) / 10,
      bitrate: stale ? 0 : Math.round(this._bps),
      decoded: mse ? mse.totalVideoFrames : this._decoded,
      dropped: this._dropped,
      painted: mse ? mse.totalVideoFrames - mse.droppedVideoFrames : this._painted,
      latency: Math.round(this._mode === 'mse' ? this._mseLatency() : this._lat),
    };
  }

  // --- element lifecycle --------------------------------------------------------------------

  connectedCallback() {
    if (!this.shadowRoot) this._build();
    this._io = new IntersectionObserver((es) => {
      this._inView = es[es.length - 1].isIntersecting;
      this._check();
    });
    this._io.observe(this);
    document.addEventListener('visibilitychange', this._check);
  }

  disconnectedCallback() {
    this._io?.disconnect();
    this._io = null;
    this._inView = false;
    document.removeEventListener('visibilitychange', this._check);
    this._check();
    this._mseDrop();
  }

  attributeChangedCallback(_name, old, val) {
    if (old === val || !this._on) return;
    this._stop();
    this._start();
  }

  _build() {
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${CSS}</style><style></style><canvas part="canvas"></canvas>
<video part="video" muted playsinline hidden></video><div class="msg" part="message" hidden></div>
<div class="ov" part="overlay" hidden></div>`;
    this._ar = root.querySelectorAll('style')[1];
    this._cv = root.querySelector('canvas');
    this._ctx = this._cv.getContext('2d', { alpha: false });
    this._v = root.querySelector('video');
    this._v.muted = true;
    this._v.disableRemotePlayback = true; // ManagedMediaSource wants no AirPlay alternative
    this._v.onerror = () => {
      if (this._ms) this._mseRecover('video: ' + (this._v.error?.message || 'playback error'));
    };
    this._msg = root.querySelector('.msg');
    this._ov = root.querySelector('.ov');
  }

  _check() {
    const on = this.isConnected && this._inView && document.visibilityState !== 'hidden';
    if (on && !this._on) this._start();
    else if (!on && this._on) this._stop();
  }

  // --- connection ---------------------------------------------------------------------------

  _url() {
    let url = this.getAttribute('src');
    const cam = this.getAttribute('camera');
    if (!url) {
      if (!cam) return null;
      const server = this.getAttribute('server');
      const path = 'ws/' + encodeURIComponent(cam);
      url = server ? server.replace(/\/*$/, '/') + path : new URL(path, import.meta.url).href;
    }
    url = url.replace(/^http/, 'ws');
    const token = this.getAttribute('token');
    if (token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    return url;
  }

  _start() {
    this._on = true;
    this._backoff = BACKOFF_MIN;
    this._reset();
    this._set('connecting');
    this._open();
  }

  _stop() {
    this._on = false;
    this._gen++;
    clearTimeout(this._timer);
    this._timer = 0;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = null;
      ws.close(1000);
    }
    this._reset();
    this._decClose();
    cancelAnimationFrame(this._raf);
    this._raf = 0;
    this._next?.close();
    this._next = null;
    this._set('idle');
  }

  _open() {
    this._timer = 0;
    const url = this._url();
    if (!url) return this._set('idle');
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      return this._set('error', 'bad URL: ' + url);
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    ws.onmessage = (e) => this._onMessage(e.data);
    ws.onclose = (e) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._reset();
      if (e.code === 1008) return this._set('error', e.reason || 'token expired'); // wait for a new token
      this._set('offline', e.reason || 'relay unreachable');
      this._timer = setTimeout(() => this._open(), this._backoff);
      this._backoff = Math.min(this._backoff * 2, BACKOFF_MAX);
    };
  }

  // Per-connection stream state; the decoder and the picture survive it.
  _reset() {
    this._busy = false; // an init is being set up: hold messages until it is done
    this._held = [];
    this._needKey = true;
    this._catching = false;
    this._srv = null;
    this._codecErr = false;
    this._mseFails = 0;
  }

  _set(state, reason = '') {
    if (state === this._state && reason === this._reason) return;
    this._state = state;
    this._reason = reason;
    if (state === 'live') this._backoff = BACKOFF_MIN;
    const ov = this._ov;
    if (ov) {
      ov.hidden = state === 'idle';
      ov.dataset.s = state;
      ov.textContent = state + (reason ? ' — ' + reason : '');
    }
    this.dispatchEvent(new CustomEvent('statechange', { detail: { state, reason } }));
  }

  _fail(message) {
    this.dispatchEvent(new CustomEvent('error', { detail: { message } }));
  }

  _onMessage(data) {
    if (this._busy) this._held.push(data);
    else this._handle(data);
  }

  _handle(data) {
    if (typeof data !== 'string') return this._frame(data);
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (m.type === 'init') this._onInit(m);
    else if (m.type === 'status') {
      this._srv = m;
      if (!this._codecErr) this._set(m.state, m.reason || '');
    }
  }

  // --- init: choose WebCodecs or MSE ----------------------------------------------------------

  async _onInit(m) {
    const gen = this._gen;
    this._busy = true;
    this._needKey = true;
    const codec = String(m.codec || '');
    let mode = null;
    if (self.VideoDecoder) {
      try {
        const cfg = { codec, optimizeForLatency: true };
        if ((await VideoDecoder.isConfigSupported(cfg)).supported) mode = 'webcodecs';
      } catch (e) {
        // an invalid codec string throws: treat as unsupported
      }
    }
    if (!mode && /^avc[13]\./.test(codec) && MS?.isTypeSupported(mimeOf(codec))) mode = 'mse';
    if (gen !== this._gen) return;
    this._init = m;
    if (m.width && m.height) this._ar.textContent = `:host{aspect-ratio:${m.width}/${m.height}}`;
    if (this._mode !== mode) {
      if (this._mode === 'webcodecs') this._decClose();
      if (this._mode === 'mse') this._mseDrop();
      this._mode = mode;
    }
    this._cv.hidden = mode === 'mse';
    this._v.hidden = mode !== 'mse';
    this._codecErr = false;
    this._msg.hidden = true;
    if (!mode) {
      const msg = `This browser can't play this camera's video (${codec || 'unknown codec'}).`;
      this._unplayable('unsupported codec ' + codec, msg);
      this._fail(msg);
    } else {
      if (this._state === 'error') this._set(this._srv?.state || 'connecting', this._srv?.reason);
      if (mode === 'webcodecs') this._decSetup(m);
      else if (!(await this._mseSetup(codec)) || gen !== this._gen) {
        if (gen === this._gen) this._mseRecover('MSE: no SourceBuffer for ' + codec);
        return;
      }
    }
    this._busy = false;
    while (!this._busy && this._held.length) this._handle(this._held.shift());
  }

  // Says so over the picture (instead of a black box) until an init brings a playable stream.
  _unplayable(reason, message) {
    this._codecErr = true;
    this._msg.textContent = message;
    this._msg.hidden = false;
    this._set('error', reason);
  }

  _frame(buf) {
    if (!this._mode || buf.byteLength <= HDR) return;
    const dv = new DataView(buf);
    const flags = dv.getUint8(0);
    const f = {
      key: !!(flags & KEY),
      cu: !!(flags & CATCHUP),
      pts: Number(dv.getBigInt64(1)),
      ingest: Number(dv.getBigUint64(9)) / 1000,
      data: new Uint8Array(buf, HDR),
    };
    if (!f.cu) {
      // fps and bitrate of the live stream, over windows of about a second
      const now = (this._last = performance.now());
      if (!this._w0) this._w0 = now;
      this._wf++;
      this._wb += buf.byteLength;
      if (now - this._w0 >= 1000) {
        this._fps = (this._wf * 1000) / (now - this._w0);
        this._bps = (this._wb * 8000) / (now - this._w0);
        this._w0 = now;
        this._wf = this._wb = 0;
      }
    }
    if (f.key) this._needKey = false;
    else if (this._needKey) return this._dropped++;
    if (this._mode === 'webcodecs') this._decFeed(f);
    else this._mseFeed(f);
  }

  // --- WebCodecs --------------------------------------------------------------------------------

  _decSetup(m) {
    this._cfg = { codec: m.codec, optimizeForLatency: true };
    if (m.width && m.height) {
      this._cfg.codedWidth = m.width;
      this._cfg.codedHeight = m.height;
    }
    const d = this._dec;
    if (d && d.state !== 'closed') {
      d.reset(); // drop whatever the old stream left queued
      d.configure(this._cfg);
    }
    this._ing = new Map(); // pts -> ingest ms, for the latency of painted frames
    this._cu = new Set(); // pts of catch-up chunks: decode, never paint
  }

  _decClose() {
    const d = this._dec;
    this._dec = null;
    if (d && d.state !== 'closed') d.close();
  }

  _decFeed(f) {
    let d = this._dec;
    if (!d || d.state === 'closed') {
      if (!f.key) return this._dropped++;
      d = this._dec = new VideoDecoder({
        output: (fr) => this._decOut(fr),
        error: (e) => {
          if (d !== this._dec) return;
          this._dec = null; // rebuilt at the next keyframe
          this._needKey = true;
          this._fail('decoder: ' + e.message);
        },
      });
      d.configure(this._cfg);
    }
    const q = d.decodeQueueSize;
    if (f.cu) this._catching = true;
    else if (this._catching && q <= QUEUE_MAX) this._catching = false;
    if (!f.key && !this._catching && q > QUEUE_MAX) {
      // decoding can't keep up: skip to the next keyframe instead of drifting behind
      this._needKey = true;
      return this._dropped++;
    }
    if (this._ing.size > 300) this._ing.clear(); // only if the decoder swallowed frames
    this._ing.set(f.pts, f.ingest);
    if (f.cu) this._cu.add(f.pts);
    try {
      d.decode(new EncodedVideoChunk({ type: f.key ? 'key' : 'delta', timestamp: f.pts, data: f.data }));
    } catch (e) {
      this._needKey = true;
      this._fail('decode: ' + e.message);
    }
  }

  _decOut(fr) {
    this._decoded++;
    const ts = fr.timestamp;
    const ingest = this._ing.get(ts);
    this._ing.delete(ts);
    if (this._cu.delete(ts) || !this._on) return fr.close();
    this._next?.close(); // replaced before it was painted
    this._next = fr;
    this._nextIngest = ingest;
    if (!this._raf) this._raf = requestAnimationFrame(this._paint);
  }

  _paint() {
    this._raf = 0;
    const fr = this._next;
    if (!fr) return;
    this._next = null;
    const c = this._cv;
    const w = fr.displayWidth;
    const h = fr.displayHeight;
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
    }
    this._ctx.drawImage(fr, 0, 0, w, h);
    fr.close();
    this._painted++;
    if (this._nextIngest) this._lat = Date.now() - this._nextIngest;
  }

  // --- Media Source Extensions --------------------------------------------------------------------

  async _mseSetup(codec) {
    const type = mimeOf(codec);
    this._mInit = null; // init segment, built from the SPS/PPS of the next keyframe
    this._jump = true;
    this._anchor = true; // map the new stream's pts onto our timeline at its first keyframe
    this._pts = null;
    this._dur = 3600; // frame duration (90 kHz ticks): 25 fps until pts deltas tell better
    this._reorder = false; // B-frames seen: decode order differs from presentation order
    if (this._sb && this._type !== type) {
      try {
        this._sb.changeType(type);
        this._type = type;
      } catch (e) {
        this._mseDrop();
      }
    }
    if (this._sb) return true;
    const ms = (this._ms = new MS());
    const v = this._v;
    this._murl = URL.createObjectURL(ms);
    v.src = this._murl;
    await new Promise((ok) => (ms.onsourceopen = ok));
    this._mseRevoke();
    if (ms !== this._ms) return false;
    try {
      this._sb = ms.addSourceBuffer(type);
    } catch (e) {
      this._fail('MSE: ' + e.message);
      return false;
    }
    this._type = type;
    this._sb.onupdateend = () => this._mseEdge();
    this._mq = [];
    // Our own 90 kHz timeline, continuous across reconnects: the camera's clock restarts.
    this._dts = -1;
    this._end = 0; // highest presentation end time so far
    this._seq = 0;
    this._keys = []; // keyframe times (s): the buffer may only be trimmed up to one of them
    return true;
  }

  _mseRevoke() {
    if (this._murl) URL.revokeObjectURL(this._murl);
    this._murl = null;
  }

  _mseDrop() {
    const ms = this._ms;
    if (!ms) return;
    this._ms = this._sb = null;
    this._mq = [];
    try {
      if (ms.readyState === 'open') ms.endOfStream();
    } catch (e) {
      // already detached
    }
    ms.onsourceopen = null;
    this._mseRevoke();
    this._v.removeAttribute('src');
    this._v.load();
  }

  _mseFeed(f) {
    const nals = splitNals(f.data);
    if (!this._mInit) {
      const sps = nals.find((n) => (n[0] & 31) === 7);
      const pps = nals.find((n) => (n[0] & 31) === 8);
      if (!f.key || !sps || !pps) return this._dropped++;
      this._mInit = initSegment(sps, pps, this._init.width, this._init.height);
      this._mq.push(this._mInit);
    }
    // Right after the catch-up burst the queue is long and the playhead has yet to jump to the
    // newest picture: that is not falling behind.
    const ahead = this._jump ? 0 : this._mseAhead();
    if (!f.key && !f.cu && !this._jump && (this._mq.length > 20 || ahead > 3)) {
      this._needKey = true; // the video element can't keep up: skip to the next keyframe
      this._anchor = true;
      return this._dropped++;
    }
    const dur = this._timing(f);
    const comp = Math.round(this._c0 + (f.pts - this._p0) * 0.09);
    // decode times: presentation times, held back by two frames when B-frames reorder them
    const dts = Math.max(this._dts + 1, comp - (this._reorder ? 2 * this._dur : 0));
    if (f.key) this._keys.push(comp / 90000);
    this._mq.push(fragment(++this._seq, dts, comp - dts, dur, f.key, nals));
    this._dts = dts;
    this._end = Math.max(this._end, comp + dur);
    this._mqLive = !f.cu;
    this._mIngest = f.ingest;
    if (f.key && !f.cu && this._jump === false && ahead > 1) this._jump = true; // after a skip
    this._msePump();
  }

  // Sample duration from pts deltas (the smallest one once B-frames show up); re-anchors the
  // pts -> timeline mapping on a new stream, after a skip, or when the camera's clock jumps.
  _timing(f) {
    const d = this._pts === null ? 0 : (f.pts - this._pts) * 0.09;
    this._pts = f.pts;
    if (d < 0 && !f.key) this._reorder = true;
    if (d > 450 && d < 90000) this._dur = Math.round(this._reorder ? Math.min(this._dur, d) : d);
    const comp = this._c0 + (f.pts - this._p0) * 0.09;
    if (f.key && (this._anchor || Math.abs(comp - this._end) > 90000)) {
      this._anchor = false;
      this._p0 = f.pts;
      this._c0 = this._end;
    }
    return this._dur;
  }

  _msePump() {
    const sb = this._sb;
    if (!sb || sb.updating || !this._mq.length) return;
    const parts = this._mq;
    this._mq = [];
    this._mLive = this._mqLive; // whether the newest frame being appended is a live one
    try {
      sb.appendBuffer(parts.length === 1 ? parts[0] : concat(parts));
    } catch (e) {
      if (e.name !== 'QuotaExceededError') return this._mseRecover('MSE: ' + e.message);
      this._needKey = true; // buffer full: free some, go on from the next keyframe
      this._anchor = true;
      this._mseTrim(true);
    }
  }

  // The video element or the SourceBuffer failed (bad data, decoder error): start a fresh
  // MediaSource from the next keyframe, a few times per connection at most.
  _mseRecover(message) {
    this._fail(message);
    this._mseDrop();
    if (++this._mseFails > 3) {
      this._mode = null; // nothing more is fed until the next init
      this._busy = false;
      this._held = [];
      return this._unplayable(message, 'Playback failed: ' + message);
    }
    if (this._init) this._onInit(this._init);
  }

  _mseAhead() {
    const b = this._v.buffered;
    return b.length ? b.end(b.length - 1) - this._v.currentTime : 0;
  }

  _mseLatency() {
    return this._mIngest ? Date.now() - this._mIngest + this._mseAhead() * 1000 : 0;
  }

  // After every append: keep the playhead at the live edge, trim old buffer, append what queued.
  _mseEdge() {
    const v = this._v;
    const b = v.buffered;
    if (b.length && !v.seeking) {
      const end = b.end(b.length - 1);
      const behind = end - v.currentTime;
      if ((this._jump && this._mLive) || behind > 1.5 || v.currentTime < b.start(b.length - 1)) {
        this._jump = false; // catch-up appended, or far behind: jump to the newest picture
        v.currentTime = Math.max(b.start(b.length - 1), end - 0.05);
      } else if (behind > 0.3) v.playbackRate = 1.1;
      else if (behind < 0.15) v.playbackRate = 1;
      if (v.paused) v.play().catch(() => {});
    }
    if (!this._mseTrim(false)) this._msePump();
  }

  // Remove old media, but only up to a keyframe: removing a keyframe would remove its GOP.
  _mseTrim(force) {
    const sb = this._sb;
    const b = this._v.buffered;
    if (!sb || sb.updating || !b.length) return false;
    const keep = this._v.currentTime - (force ? 0.5 : 3);
    if (!force && keep - b.start(0) < 20) return false;
    let cut = 0;
    while (this._keys.length && this._keys[0] <= keep) cut = this._keys.shift();
    if (cut <= b.start(0)) return false;
    this._keys.unshift(cut);
    sb.remove(0, cut);
    return true;
  }
}

// --- fragmented MP4 for H.264 ------------------------------------------------------------------

// Annex B -> NAL units (start codes and trailing zero bytes removed)
function splitNals(b) {
  const out = [];
  let s = -1;
  for (let i = 0; i + 2 < b.length; i++) {
    if (b[i] === 0 && b[i + 1] === 0 && b[i + 2] === 1) {
      if (s >= 0) out.push(trimEnd(b, s, i));
      s = i += 3;
      i--;
    }
  }
  if (s >= 0) out.push(trimEnd(b, s, b.length));
  return out.filter((n) => n.length);
}

function trimEnd(b, s, e) {
  while (e > s && b[e - 1] === 0) e--;
  return b.subarray(s, e);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const u8 = (a) => new Uint8Array(a);
const u16 = (n) => u8([(n >> 8) & 255, n & 255]);
const u32 = (n) => u8([n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255]);
const zeros = (n) => new Uint8Array(n);
const str = (s) => u8([...s].map((c) => c.charCodeAt(0)));
const MATRIX = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000].map(u32);
const box = (type, ...parts) => concat([u32(8 + parts.reduce((n, p) => n + p.length, 0)), str(type), ...parts]);
const full = (type, vf, ...parts) => box(type, u32(vf), ...parts);

function initSegment(sps, pps, width, height) {
  const w = width || 0;
  const h = height || 0;
  const avcC = box('avcC', u8([1, sps[1], sps[2], sps[3], 0xff, 0xe1]), u16(sps.length), sps,
    u8([1]), u16(pps.length), pps);
  const avc1 = box('avc1', zeros(6), u16(1), zeros(16), u16(w), u16(h), u32(0x480000),
    u32(0x480000), zeros(4), u16(1), zeros(32), u16(0x18), u16(0xffff), avcC);
  const stbl = box('stbl', full('stsd', 0, u32(1), avc1), full('stts', 0, u32(0)),
    full('stsc', 0, u32(0)), full('stsz', 0, u32(0), u32(0)), full('stco', 0, u32(0)));
  const minf = box('minf', full('vmhd', 1, zeros(8)),
    box('dinf', full('dref', 0, u32(1), full('url ', 1))), stbl);
  const mdia = box('mdia', full('mdhd', 0, zeros(8), u32(90000), u32(0), u16(0x55c4), u16(0)),
    full('hdlr', 0, u32(0), str('vide'), zeros(12), str('cxrelay\0')), minf);
  const tkhd = full('tkhd', 3, zeros(8), u32(1), zeros(4), u32(0), zeros(8), zeros(8), ...MATRIX,
    u32(w << 16), u32(h << 16));
  const mvhd = full('mvhd', 0, zeros(8), u32(1000), u32(0), u32(0x10000), u16(0x100), zeros(10),
    ...MATRIX, zeros(24), u32(2));
  const mvex = box('mvex', full('trex', 0, u32(1), u32(1), u32(0), u32(0), u32(0)));
  return concat([box('ftyp', str('iso5'), u32(512), str('iso5iso6mp41')),
    box('moov', mvhd, box('trak', tkhd, mdia), mvex)]);
}

// One moof+mdat per access unit, NAL units length-prefixed.
function fragment(seq, dts, cts, dur, key, nals) {
  const data = concat(nals.flatMap((n) => [u32(n.length), n]));
  const mfhd = full('mfhd', 0, u32(seq));
  const tfhd = full('tfhd', 0x20000, u32(1)); // default-base-is-moof
  const tfdt = full('tfdt', 0x1000000, u32(Math.floor(dts / 2 ** 32)), u32(dts >>> 0));
  const moofLen = 8 + mfhd.length + 8 + tfhd.length + tfdt.length + 36;
  // version 1: signed composition offsets
  const trun = full('trun', 0x1000f01, u32(1), u32(moofLen + 8), u32(dur), u32(data.length),
    u32(key ? 0x2000000 : 0x1010000), u32(cts));
  return concat([box('moof', mfhd, box('traf', tfhd, tfdt, trun)), box('mdat', data)]);
}

if (!customElements.get('cxrelay-player')) customElements.define('cxrelay-player', CxrelayPlayer);
