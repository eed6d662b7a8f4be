/**
 * cxrelay.js — the <cxrelay-player> custom element (protocol v1, see docs/protocol.md).
 *
 * Whole embed, no build step, no dependencies:
 *
 *   <script type="module" src="https://edge-box:8443/cxrelay.js"></script>
 *   <cxrelay-player camera="lobby"></cxrelay-player>
 *
 * Attributes (changing camera, server, src or token reconnects):
 *   camera   camera name as configured in the relay
 *   server   relay base URL, e.g. "wss://edge-box:8443" (http/https are turned into ws/wss).
 *            Default: the place this script was loaded from, so a page on another site works.
 *   src      full WebSocket URL, e.g. "wss://edge-box:8443/ws/lobby"; wins over camera/server
 *   token    viewer token, sent as ?token=…
 *   stream   'auto' (default): the smallest of the camera's streams whose height covers the
 *            element's (× devicePixelRatio), picked again on resize and fullscreen; 'main';
 *            'sub' (the camera's sub-stream; its main stream if it has none). Switches on the
 *            same socket, the last picture staying up until the new stream's first one.
 *   frames   'all' (default) or 'keyframes': stills, only the camera's keyframes
 *
 * Methods:
 *   snapshot(type?, quality?)  a Promise of a Blob holding the picture on screen, at the stream's
 *            size: type 'image/png' (default), 'image/jpeg' or 'image/webp', quality 0-1 for
 *            lossy types; rejects when nothing has been shown yet
 *
 * Read-only properties:
 *   state    'idle' (not streaming: hidden, off-screen or detached) | 'connecting' | 'live' |
 *            'offline' | 'error'
 *   reason   human-readable reason for the state, or ''
 *   stats    {mode: 'webcodecs'|'mse'|null, codec, width, height, fps, bitrate (bit/s),
 *            decoded, dropped (skipped to keep latency down), painted, stream, frames,
 *            latency (ms from the relay's receipt of the frame shown to its paint, corrected
 *            for the clock offset), clockOffset (ms, relay − browser; null: unknown)}
 *
 * Events:
 *   statechange  detail {state, reason}
 *   error        detail {message, status?, detail?}  (refused by the relay: status is the HTTP
 *                status and detail the relay's one-line reason; codec not playable; decoder or
 *                MSE failure)
 *
 * Styling: size it like a <video> (CSS width/height; with only a width the camera's aspect ratio
 * is kept). Shadow parts: ::part(canvas), ::part(video), ::part(overlay), ::part(message).
 *
 * Structure: the element (connection, state, stats, layout) plays through one of two outputs
 * with the same interface, WebCodecsOutput (secure contexts: VideoDecoder painting the newest
 * frame on a canvas) and MseOutput (elsewhere: a tiny fragmented-MP4 muxer feeding Media Source
 * Extensions). Catch-up frames (flag 0x02) are decoded but never painted; when decoding falls
 * behind, delta frames are dropped up to the next keyframe so latency never drifts. A player
 * hidden or off screen for HIDDEN_RELEASE_MS closes its socket and releases its decoder. Every
 * few seconds it tells the relay what it sees (`stats`: latencies and drops), the clock offset
 * taken from `ping`/`pong` exchanges.
 */

const HEADER_BYTES = 17; // binary header: flags u8, pts i64 µs, ingest u64 µs
const FLAG_KEY = 1;
const FLAG_CATCHUP = 2;
const DECODE_QUEUE_MAX = 6; // frames waiting in the VideoDecoder before we skip to a keyframe
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;
const VERDICT_TIMEOUT_MS = 5000; // for the plain GET that asks the relay why it refused
const REPICK_DELAY_MS = 250; // a resize settles before another stream is picked
const SELECT_GAP_MS = 1000; // at most one select a second (the relay allows 8 at once, 1/s)
const HIDDEN_RELEASE_MS = 2000; // hidden this long: close the socket, release the decoder
const SUB_GUESS_HEIGHT = 360; // a sub-stream the relay has not pulled yet: assumed this tall
const STATS_EVERY_MS = 5000; // a stats message to the relay
const STATS_SAMPLES = 64; // latencies per stats message, at most (the relay takes no more)
const PING_EVERY_MS = 15000; // clock offset: one ping, after a first burst of PING_BURST
const PING_BURST = 3;
const PING_KEEP = 8; // pings awaiting their pong, at most
const CLOCK_DRIFT = 1e-4; // how fast two clocks may drift apart (100 ppm): ages an offset
const LATE_MS = 1000; // a live frame this old on arrival (clocks corrected): skip to a keyframe
// MSE: how far the playhead may trail the newest buffered picture, s
const LIVE_JUMP_S = 0.5; // the newest keyframe is this far ahead: seek to it
const LIVE_FAST_S = 0.2; // play at LIVE_RATE past this...
const LIVE_NEAR_S = 0.15; // ...and at 1x below this (less: the element runs dry, `waiting`)
const LIVE_RATE = 1.25;
const MediaSourceClass = self.ManagedMediaSource || self.MediaSource;
const mp4Type = (codec) => `video/mp4; codecs="${codec}"`;

/**
 * What the relay's verdict (the status of a plain GET of the refused URL) means to a viewer.
 * @type {Record<number, [state: string, reason: string]>}
 */
const REFUSALS = {
  401: ['error', 'token missing, expired or not for this camera'],
  403: ['error', "this page's origin is not allowed"],
  404: ['error', 'no camera named '], // + the camera's name
  426: ['offline', 'WebSocket upgrade failed'], // the relay would admit us: a proxy in between?
  503: ['offline', 'too many viewers'],
};

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

/**
 * One of a camera's streams, as `init` lists them (sizes and codec null until the relay has
 * pulled it once).
 * @typedef {{name: string, width: ?number, height: ?number, codec: ?string}} StreamInfo
 */

/**
 * The relay's `init` message (docs/protocol.md); `stream`, `frames`, `streams` and `time` come
 * from relays that have sub-streams.
 * @typedef {{codec: string, width: number, height: number, camera?: string, stream?: string,
 *     frames?: string, streams?: StreamInfo[], time?: number}} Init
 */

/**
 * One access unit from a binary message.
 * @typedef {object} Frame
 * @property {boolean} key      keyframe (IDR, with SPS and PPS): a decoder can start here
 * @property {boolean} catchup  backlog sent on joining: decode it, never paint it
 * @property {number} pts       presentation time, µs on the camera's clock
 * @property {number} ingest    when the relay received it, ms since the Unix epoch
 * @property {Uint8Array} data  the access unit, Annex B
 */

/**
 * What the element asks of an output (WebCodecsOutput, MseOutput):
 *   mode                  'webcodecs' | 'mse', for stats.mode
 *   configure(init)       (re)start for the stream an init describes; the next frame fed is a
 *                         keyframe. Resolves true when ready, false when closed meanwhile;
 *                         rejects when the output cannot start (the element may retry).
 *   feed(frame)           one access unit, in decode order
 *   suspend()             streaming stopped for now (off screen, hidden tab): let go of what
 *                         costs while nothing plays; the last picture stays
 *   stats                 {decoded, dropped, painted, latency (ms)}
 *   takeLatencies()       ms from ingest to paint (our clock) of frames shown since the last
 *                         call, at most a few hundred
 *   close()               release everything; nothing stays behind
 * @typedef {{decoded: number, dropped: number, painted: number, latency: number}} OutputStats
 */

export class CxrelayPlayer extends HTMLElement {
  static get observedAttributes() {
    return ['camera', 'server', 'src', 'token', 'stream', 'frames'];
  }

  constructor() {
    super();
    // --- state, as the page sees it
    /** @type {'idle'|'connecting'|'live'|'offline'|'error'} see the `state` property */
    this._state = 'idle';
    /** @type {string} human-readable reason for the state, or '' */
    this._reason = '';
    /** @type {boolean} streaming wanted: in the document, on screen and the page visible */
    this._streaming = false;
    /** @type {boolean} the element intersects the viewport */
    this._inView = false;
    /** @type {number} bumped on every stop: async work from an older run must not touch anything */
    this._run = 0;
    /** @type {IntersectionObserver|null} tells whether we are on screen; while in the document */
    this._observer = null;

    // --- connection
    /** @type {WebSocket|null} the relay connection */
    this._socket = null;
    /** @type {number} setTimeout id of the next connection attempt, or 0 */
    this._retryTimer = 0;
    /** @type {number} ms before the next attempt: doubles up to RETRY_MAX_MS, reset once live */
    this._retryDelay = RETRY_MIN_MS;
    /** @type {AbortController|null} the plain GET asking the relay why it refused, in flight */
    this._verdictRequest = null;
    /** @type {string} the last refusal reported as an `error` event (each reason once) */
    this._refusal = '';

    // --- the stream on this connection
    /** @type {Init|null} the relay's last init */
    this._init = null;
    /** @type {{state: string, reason?: string}|null} the relay's last status message */
    this._relayStatus = null;
    /** @type {boolean} an init is being set up: messages wait in _held until it is done */
    this._configuring = false;
    /** @type {Array<string|ArrayBuffer>} messages received while configuring, in order */
    this._held = [];
    /** @type {boolean} the stream can't be played: the message covers the picture */
    this._unplayable = false;
    /**
     * @type {string} why this stream plays and not the other one, e.g. 'playing the H.264 sub
     *     stream: this browser can't decode H.265 (hvc1.1.6.L93.B0)'; the reason while live
     */
    this._note = '';
    /** @type {number} outputs that broke on this connection within a minute of each other:
     * after 3, give up until an init */
    this._failures = 0;
    /** @type {number} when the output last broke (performance.now()) */
    this._failedAt = 0;

    // --- playing
    /** @type {WebCodecsOutput|MseOutput|null} plays the stream; made at the first playable init */
    this._output = null;
    /** @type {{decoded: number, dropped: number, painted: number}} counts of closed outputs */
    this._retired = { decoded: 0, dropped: 0, painted: 0 };

    // --- which stream, and which of its frames (the relay's `select`)
    /** @type {string} the stream the relay sends now ('main' or 'sub'), from the last init */
    this._stream = '';
    /** @type {string} the stream last asked for, in the URL or a select */
    this._askedStream = '';
    /** @type {string} the frames last asked for: 'all' or 'keyframes' */
    this._askedFrames = 'all';
    /** @type {StreamInfo[]} the camera's streams, from the last init that listed them */
    this._streams = [];
    /** @type {Map<string, boolean>} codec -> whether this browser plays it, once known */
    this._playable = new Map();
    /** @type {ResizeObserver|null} picks the stream again when our size changes */
    this._resizeObserver = null;
    /** @type {number} setTimeout id of the next pick, or 0 */
    this._repickTimer = 0;
    /** @type {number} performance.now() of the last select sent, ms */
    this._selectedAt = -Infinity;
    /** @type {number} setTimeout id of a hidden player's release, or 0 */
    this._releaseTimer = 0;

    // --- what the viewer sees: latency on our screen, reported to the relay
    /** @type {number|null} the relay's clock minus ours, ms; null until the relay tells it */
    this._clockOffset = null;
    /** @type {number} how wrong _clockOffset may be, ms: half its ping's round trip (0 for
     *     init's, which can only be early), growing by CLOCK_DRIFT as it ages */
    this._clockError = 0;
    /** @type {number} Date.now() when _clockOffset was measured */
    this._clockAt = 0;
    /** @type {boolean} live frames arrived late: skipping them up to the next keyframe */
    this._skipping = false;
    /** @type {number} frames skipped for arriving late */
    this._late = 0;
    /** @type {Map<number, number>} ping id -> Date.now() when it was sent */
    this._pings = new Map();
    /** @type {number} the last ping id */
    this._pingId = 0;
    /** @type {number} setTimeout id of the next ping, or 0 */
    this._pingTimer = 0;
    /** @type {number} pings sent on this connection */
    this._pingsSent = 0;
    /** @type {number} setInterval id of the stats messages, or 0 */
    this._statsTimer = 0;
    /** @type {number} stats.dropped when the last stats message went */
    this._droppedReported = 0;

    // --- live frames received (catch-up excluded), for fps and bitrate
    /** @type {number} performance.now() when the current window (about 1 s) began, ms; 0: none */
    this._windowStart = 0;
    /** @type {number} frames received in the current window */
    this._windowFrames = 0;
    /** @type {number} bytes received in the current window */
    this._windowBytes = 0;
    /** @type {number} frames per second over the last whole window */
    this._fps = 0;
    /** @type {number} bits per second over the last whole window */
    this._bitrate = 0;
    /** @type {number} performance.now() of the last live frame, ms: after 2 s, fps reads 0 */
    this._lastFrameAt = 0;

    // --- shadow DOM, built at the first connectedCallback
    /** @type {HTMLCanvasElement|null} the picture on the WebCodecs path */
    this._canvas = null;
    /** @type {HTMLVideoElement|null} the picture on the MSE path */
    this._video = null;
    /** @type {HTMLElement|null} covers the picture when the stream can't be played */
    this._message = null;
    /** @type {HTMLElement|null} the state label, bottom left */
    this._overlay = null;
    /** @type {HTMLStyleElement|null} the host's aspect ratio, from init */
    this._aspect = null;

    this._check = this._check.bind(this);
    this._onResize = this._onResize.bind(this);
  }

  // --- public API ---------------------------------------------------------------------------

  get state() {
    return this._state;
  }

  get reason() {
    return this._reason;
  }

  get stats() {
    const output = this._output;
    const played = output ? output.stats : { decoded: 0, dropped: 0, painted: 0, latency: 0 };
    const stale = performance.now() - this._lastFrameAt > 2000;
    const init = this._init || {};
    const retired = this._retired;
    return {
      mode: output ? output.mode : null,
      codec: init.codec || null,
      width: init.width || 0,
      height: init.height || 0,
      fps: stale ? 0 : Math.round(this._fps * 10) / 10,
      bitrate: stale ? 0 : Math.round(this._bitrate),
      decoded: retired.decoded + played.decoded,
      dropped: retired.dropped + played.dropped + this._late,
      painted: retired.painted + played.painted,
      latency: Math.round(played.latency + (this._clockOffset || 0)),
      stream: this._stream || null,
      frames: this._init ? this._init.frames || 'all' : null,
      clockOffset: this._clockOffset === null ? null : Math.round(this._clockOffset),
    };
  }

  /**
   * The picture on screen as an image, at the stream's size: what the viewer sees now (the
   * last picture stays on screen while idle, offline or reconnecting).
   * @param {string} [type] 'image/png' (default), 'image/jpeg', 'image/webp'
   * @param {number} [quality] 0 to 1, for lossy types
   * @returns {Promise<Blob>} rejects when no picture has been shown yet
   */
  snapshot(type = 'image/png', quality = undefined) {
    const video = this._video;
    let canvas = this._canvas;
    if (video && !video.hidden) {
      // MSE: copy the video element's current picture (toBlob needs a canvas)
      if (video.readyState < 2 || !video.videoWidth) return noPicture();
      canvas = document.createElement('canvas');
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext('2d').drawImage(video, 0, 0, canvas.width, canvas.height);
    } else if (!canvas || this.stats.painted === 0) {
      return noPicture();
    }
    // toBlob takes the canvas's picture now; only the encoding happens later
    return new Promise((resolve, reject) => canvas.toBlob((blob) => {
      if (blob) resolve(blob);
      else reject(new Error(`snapshot: the browser could not encode ${type}`));
    }, type, quality));
  }

  // --- element lifecycle --------------------------------------------------------------------

  connectedCallback() {
    if (!this.shadowRoot) this._build();
    this._observer = new IntersectionObserver((entries) => {
      this._inView = entries[entries.length - 1].isIntersecting;
      this._check();
    });
    this._observer.observe(this);
    this._resizeObserver = new ResizeObserver(this._onResize);
    this._resizeObserver.observe(this);
    document.addEventListener('visibilitychange', this._check);
    document.addEventListener('fullscreenchange', this._onResize);
  }

  disconnectedCallback() {
    this._observer?.disconnect();
    this._observer = null;
    this._resizeObserver?.disconnect();
    this._resizeObserver = null;
    this._inView = false;
    document.removeEventListener('visibilitychange', this._check);
    document.removeEventListener('fullscreenchange', this._onResize);
    this._check();
    this._closeOutput();
  }

  attributeChangedCallback(name, old, value) {
    if (old === value || !this._streaming) return;
    if (name === 'stream' || name === 'frames') return this._repick();
    this._restart();
  }

  _restart() {
    this._stop();
    this._start();
  }

  _build() {
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${CSS}</style><style></style><canvas part="canvas"></canvas>
<video part="video" muted playsinline hidden></video><div class="msg" part="message" hidden></div>
<div class="ov" part="overlay" hidden></div>`;
    this._aspect = root.querySelectorAll('style')[1];
    this._canvas = root.querySelector('canvas');
    this._video = root.querySelector('video');
    this._video.muted = true;
    this._message = root.querySelector('.msg');
    this._overlay = root.querySelector('.ov');
  }

  _check() {
    const on = this.isConnected && this._inView && document.visibilityState !== 'hidden';
    if (on) {
      clearTimeout(this._releaseTimer);
      this._releaseTimer = 0;
      if (!this._streaming) this._start();
    } else if (this._streaming && !this.isConnected) this._stop();
    else if (this._streaming && !this._releaseTimer) {
      // Shown again soon (a wall's tile after a look at another camera), it has lost nothing;
      // hidden for longer, it lets go of its socket and its decoder.
      this._releaseTimer = setTimeout(() => {
        this._releaseTimer = 0;
        if (!(this.isConnected && this._inView && document.visibilityState !== 'hidden')) {
          this._stop();
        }
      }, HIDDEN_RELEASE_MS);
    }
  }

  // --- connection ---------------------------------------------------------------------------

  _url() {
    let url = this.getAttribute('src');
    const camera = this.getAttribute('camera');
    if (!url) {
      if (!camera) return null;
      const server = this.getAttribute('server');
      const path = 'ws/' + encodeURIComponent(camera);
      url = server ? server.replace(/\/*$/, '/') + path : new URL(path, import.meta.url).href;
    }
    url = url.replace(/^http/, 'ws');
    const add = (key, value) => (url += (url.includes('?') ? '&' : '?') + key + '=' + value);
    const token = this.getAttribute('token');
    if (token) add('token', encodeURIComponent(token));
    // What a relay without sub-streams ignores; a camera without one serves its main stream.
    this._askedStream = this._pick();
    this._askedFrames = this._framesWanted();
    if (this._askedStream !== 'main' && !/[?&]stream=/.test(url)) add('stream', this._askedStream);
    if (this._askedFrames !== 'all' && !/[?&]frames=/.test(url)) add('frames', this._askedFrames);
    return url;
  }

  // --- which stream ---------------------------------------------------------------------------

  _framesWanted() {
    return this.getAttribute('frames') === 'keyframes' ? 'keyframes' : 'all';
  }

  // The stream to watch: the attribute's, or for 'auto' the smallest playable one whose height
  // covers ours in device pixels (else the largest). A stream the relay has not pulled yet has
  // no size: a main stream is taken as the largest, a sub-stream as SUB_GUESS_HEIGHT. The
  // attribute's stream too gives way to a playable one when this browser can't decode it (an
  // H.265 main stream's H.264 sub-stream).
  _pick() {
    const wanted = this.getAttribute('stream');
    const need = this.getBoundingClientRect().height * (self.devicePixelRatio || 1);
    const height = (s) => s.height || (s.name === 'main' ? Infinity : SUB_GUESS_HEIGHT);
    const streams = this._streams
      .filter((s) => !s.codec || this._playable.get(s.codec) !== false)
      .sort((a, b) => height(a) - height(b));
    if ((wanted === 'main' || wanted === 'sub') &&
      (!streams.length || streams.some((s) => s.name === wanted))) return wanted;
    if (!streams.length) return need > SUB_GUESS_HEIGHT ? 'main' : 'sub';
    return (streams.find((s) => height(s) >= need) || streams[streams.length - 1]).name;
  }

  _onResize() {
    clearTimeout(this._repickTimer);
    this._repickTimer = setTimeout(() => this._repick(), REPICK_DELAY_MS);
  }

  // Ask for another stream (or frames) on the same socket if what we want changed. Only relays
  // that list the camera's streams in init know `select`; before an init (a stream that never
  // came up), the next connection asks for it instead.
  _repick() {
    clearTimeout(this._repickTimer);
    this._repickTimer = 0;
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const stream = this._pick();
    const frames = this._framesWanted();
    if (stream === this._askedStream && frames === this._askedFrames) return;
    if (!this._init?.streams) {
      if (!this._init) this._restart();
      return;
    }
    const wait = this._selectedAt + SELECT_GAP_MS - performance.now();
    if (wait > 0) {
      this._repickTimer = setTimeout(() => this._repick(), wait);
      return;
    }
    this._selectedAt = performance.now();
    this._askedStream = stream;
    this._askedFrames = frames;
    socket.send(JSON.stringify({ type: 'select', stream, frames }));
  }

  // Which of the camera's codecs this browser plays, found out once each; a stream it can't
  // play is never picked (an H.265 main stream's H.264 sub-stream is).
  _learnCodecs(streams) {
    for (const { codec, width, height } of streams) {
      if (!codec || this._playable.has(codec)) continue;
      this._playable.set(codec, true); // until found out: not asked twice meanwhile
      const init = { codec, width, height };
      WebCodecsOutput.supports(init).then((ok) => {
        const playable = ok || MseOutput.supports(init);
        this._playable.set(codec, playable);
        if (!playable) this._repick();
      });
    }
  }

  // --- what the viewer sees, told to the relay -------------------------------------------------

  _ping() {
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const id = ++this._pingId;
    this._pings.set(id, Date.now());
    if (this._pings.size > PING_KEEP) this._pings.delete(this._pings.keys().next().value);
    socket.send(JSON.stringify({ type: 'ping', id }));
    this._pingsSent++;
    this._pingTimer = setTimeout(() => this._ping(),
      this._pingsSent < PING_BURST ? 300 : PING_EVERY_MS);
  }

  // The offset from the exchange with the shortest round trip, the one least skewed by a
  // queue on either way (a pong waits behind the video sent before it; a busy page reads it
  // late), kept until a better one comes or drift makes it worse than a new one.
  _onPong(pong) {
    const sent = this._pings.get(pong.id);
    if (sent === undefined || typeof pong.time !== 'number') return;
    this._pings.delete(pong.id);
    const now = Date.now();
    const error = (now - sent) / 2;
    if (this._clockAt && error > this._clockError + (now - this._clockAt) * CLOCK_DRIFT) return;
    this._clockOffset = pong.time / 1000 - (sent + now) / 2;
    this._clockError = error;
    this._clockAt = now;
  }

  _report() {
    const socket = this._socket;
    const output = this._output;
    if (!socket || socket.readyState !== WebSocket.OPEN || !output) return;
    const raw = output.takeLatencies();
    if (this._clockOffset === null) return; // a relay that doesn't tell its clock takes no stats
    const dropped = this.stats.dropped;
    const report = {
      type: 'stats',
      latency: evenly(raw, STATS_SAMPLES)
        .map((ms) => Math.round(Math.max(0, ms + this._clockOffset) * 10) / 10),
      dropped: Math.max(0, dropped - this._droppedReported),
    };
    this._droppedReported = dropped;
    if (report.latency.length || report.dropped) socket.send(JSON.stringify(report));
  }

  _start() {
    this._streaming = true;
    this._retryDelay = RETRY_MIN_MS;
    this._refusal = '';
    this._resetConnection();
    this._setState('connecting');
    this._connect();
  }

  _stop() {
    this._streaming = false;
    this._run++;
    clearTimeout(this._retryTimer);
    this._retryTimer = 0;
    clearTimeout(this._releaseTimer);
    this._releaseTimer = 0;
    this._verdictRequest?.abort();
    this._verdictRequest = null;
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onmessage = socket.onclose = null;
      socket.close(1000);
    }
    this._resetConnection();
    this._output?.suspend();
    this._setState('idle');
  }

  _connect() {
    this._retryTimer = 0;
    const url = this._url();
    if (!url) return this._setState('idle');
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (e) {
      return this._setState('error', 'bad URL: ' + url);
    }
    let opened = false;
    socket.binaryType = 'arraybuffer';
    this._socket = socket;
    socket.onopen = () => {
      opened = true;
      this._statsTimer = setInterval(() => this._report(), STATS_EVERY_MS);
    };
    socket.onmessage = (e) => this._onMessage(e.data);
    socket.onclose = (e) => {
      if (socket !== this._socket) return;
      this._socket = null;
      this._resetConnection();
      if (e.code === 1008) return this._setState('error', e.reason || 'token expired'); // wait for a new token
      if (!opened) return this._askWhyRefused(url);
      this._setState('offline', e.reason || 'relay unreachable');
      this._retryLater();
    };
  }

  _retryLater() {
    this._retryTimer = setTimeout(() => this._connect(), this._retryDelay);
    this._retryDelay = Math.min(this._retryDelay * 2, RETRY_MAX_MS);
  }

  // A WebSocket refused with an HTTP status shows the page no status. The relay answers a plain
  // GET of the same URL with the verdict the upgrade got (CORS-readable): ask it, say why, and
  // retry, except for a token, which only a new `token` attribute can fix.
  async _askWhyRefused(url) {
    const run = this._run;
    const request = (this._verdictRequest = new AbortController());
    const timeout = setTimeout(() => request.abort(), VERDICT_TIMEOUT_MS);
    let status = 0;
    let detail = '';
    try {
      const response = await fetch(url.replace(/^ws/, 'http'), {
        credentials: 'include', // a token may be in the relay's cookie, as on the upgrade
        cache: 'no-store',
        signal: request.signal,
      });
      status = response.status;
      detail = (await response.text()).trim().slice(0, 200);
    } catch (e) {
      // unreachable, timed out, or an answer this page may not read (not the relay's)
    }
    clearTimeout(timeout);
    if (run !== this._run) return;
    this._verdictRequest = null;
    let [state, reason] = REFUSALS[status] || ['offline', 'relay unreachable'];
    if (status === 404) reason += '"' + cameraOf(url) + '"';
    if (!REFUSALS[status] && status) reason += ' (HTTP ' + status + ')';
    this._setState(state, reason);
    if (state === 'error' && reason !== this._refusal) {
      this._refusal = reason;
      this._error(reason, { status, detail });
    }
    if (status !== 401) this._retryLater();
  }

  // Per-connection stream state; the output and its picture survive it.
  _resetConnection() {
    this._configuring = false;
    this._held = [];
    this._relayStatus = null;
    this._unplayable = false;
    this._failures = 0;
    clearTimeout(this._repickTimer);
    this._repickTimer = 0;
    clearTimeout(this._pingTimer);
    this._pingTimer = 0;
    this._pingsSent = 0;
    this._pings.clear();
    this._skipping = false;
    clearInterval(this._statsTimer);
    this._statsTimer = 0;
  }

  _setState(state, reason = '') {
    if (state === this._state && reason === this._reason) return;
    this._state = state;
    this._reason = reason;
    if (state === 'live') {
      this._retryDelay = RETRY_MIN_MS;
      this._refusal = '';
    }
    const overlay = this._overlay;
    if (overlay) {
      overlay.hidden = state === 'idle';
      overlay.dataset.s = state;
      overlay.textContent = state + (reason ? ' — ' + reason : '');
    }
    this.dispatchEvent(new CustomEvent('statechange', { detail: { state, reason } }));
  }

  _error(message, extra) {
    this.dispatchEvent(new CustomEvent('error', { detail: { message, ...extra } }));
  }

  _onMessage(data) {
    if (this._configuring) this._held.push(data);
    else this._handle(data);
  }

  _handle(data) {
    if (typeof data !== 'string') return this._onFrame(data);
    let message;
    try {
      message = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (message.type === 'init') this._onInit(message);
    else if (message.type === 'pong') this._onPong(message);
    else if (message.type === 'status') {
      this._relayStatus = message;
      if (!this._unplayable) this._setState(message.state, message.reason || this._note);
    }
  }

  // --- init: choose the output ----------------------------------------------------------------

  async _onInit(init) {
    const run = this._run;
    this._configuring = true;
    this._stream = init.stream || 'main';
    if (init.stream) {
      // The relay's answer to what we asked (a camera without a sub-stream answers 'main').
      this._askedStream = init.stream;
      this._askedFrames = init.frames || 'all';
    }
    this._streams = Array.isArray(init.streams) ? init.streams : [];
    this._learnCodecs(this._streams);
    if (this._clockOffset === null && typeof init.time === 'number') {
      this._clockOffset = init.time / 1000 - Date.now(); // until a pong tells better
    }
    if (typeof init.time === 'number' && !this._pingsSent) this._ping();
    const codec = String(init.codec || '');
    const Output = (await WebCodecsOutput.supports(init))
      ? WebCodecsOutput
      : MseOutput.supports(init)
        ? MseOutput
        : null;
    if (run !== this._run) return;
    this._init = init;
    if (init.width && init.height) {
      this._aspect.textContent = `:host{aspect-ratio:${init.width}/${init.height}}`;
    }
    if (this._output && this._output.constructor !== Output) this._closeOutput();
    this._unplayable = false;
    this._message.hidden = true;
    if (codec) this._playable.set(codec, !!Output);
    const lost = this._streams.find((s) => s.codec && this._playable.get(s.codec) === false);
    const name = codecName(codec);
    this._note = Output && lost
      ? `playing the ${syntaxOf(codec)?.name || codec} ${this._stream} stream: this browser can't decode ${
        codecName(lost.codec)}`
      : '';
    if (!Output) {
      // Another of the camera's streams may play (an H.265 main stream's H.264 sub-stream;
      // a stream not pulled yet has no codec to judge): _repick asks for it at once. The
      // message is for a camera with none.
      if (!this._streams.some((s) => s.name !== this._stream && this._playable.get(s.codec) !== false)) {
        const message = `This browser can't play this camera's video: it can't decode ${name}.`;
        this._showUnplayable("can't decode " + name, message);
        this._error(message);
      }
      this._repick();
    } else {
      const status = this._relayStatus;
      this._setState(this._state === 'error' ? status?.state || 'connecting' : this._state,
        status?.reason || this._note);
      const output = (this._output ||= Output === MseOutput
        ? new MseOutput(this._video, (message) => this._outputFailed(message))
        : new WebCodecsOutput(this._canvas, (message) => this._error(message)));
      this._video.hidden = Output !== MseOutput;
      this._canvas.hidden = !this._video.hidden;
      let ready;
      try {
        ready = await output.configure(init);
      } catch (e) {
        if (run === this._run && output === this._output) this._outputFailed(e.message);
        return;
      }
      if (!ready || run !== this._run || output !== this._output) return;
    }
    this._configuring = false;
    while (!this._configuring && this._held.length) this._handle(this._held.shift());
    this._repick(); // sizes known now: maybe another stream fits better
  }

  // Says so over the picture (instead of a black box) until an init brings a playable stream.
  _showUnplayable(reason, message) {
    this._unplayable = true;
    this._message.textContent = message;
    this._message.hidden = false;
    this._setState('error', reason);
  }

  // The output broke (the video element or the SourceBuffer failed on bad data): start a fresh
  // one from the next keyframe, a few times per connection at most.
  _outputFailed(message) {
    this._error(message);
    // Only failures in a row give up: an engine that fails now and then (WebKitGTK's MSE on a
    // busy machine: "Failed to push buffer") plays on for months.
    const now = performance.now();
    if (now - this._failedAt > 60000) this._failures = 0;
    this._failedAt = now;
    if (++this._failures > 3) {
      this._closeOutput(); // nothing more is fed until the next init
      this._configuring = false;
      this._held = [];
      return this._showUnplayable(message, 'Playback failed: ' + message);
    }
    if (this._init) this._onInit(this._init);
  }

  _closeOutput() {
    const output = this._output;
    if (!output) return;
    const stats = output.stats;
    for (const key in this._retired) this._retired[key] += stats[key];
    this._output = null;
    output.close();
  }

  _onFrame(buffer) {
    const output = this._output;
    if (!output || buffer.byteLength <= HEADER_BYTES) return;
    const view = new DataView(buffer);
    const flags = view.getUint8(0);
    /** @type {Frame} */
    const frame = {
      key: !!(flags & FLAG_KEY),
      catchup: !!(flags & FLAG_CATCHUP),
      pts: Number(view.getBigInt64(1)),
      ingest: Number(view.getBigUint64(9)) / 1000,
      data: new Uint8Array(buffer, HEADER_BYTES),
    };
    if (!frame.catchup) {
      // fps and bitrate of the live stream, over windows of about a second
      const now = (this._lastFrameAt = performance.now());
      if (!this._windowStart) this._windowStart = now;
      this._windowFrames++;
      this._windowBytes += buffer.byteLength;
      const elapsed = now - this._windowStart;
      if (elapsed >= 1000) {
        this._fps = (this._windowFrames * 1000) / elapsed;
        this._bitrate = (this._windowBytes * 8000) / elapsed;
        this._windowStart = now;
        this._windowFrames = this._windowBytes = 0;
      }
    }
    // Already late on arrival: this page fell behind (busy, its messages queued). Skipping to
    // the next keyframe catches up at once, so latency never drifts. (The offset from init is
    // biased early, never late: a frame is never taken for late for that.)
    if (!frame.catchup && this._clockOffset !== null &&
        Date.now() + this._clockOffset - this._clockError - frame.ingest > LATE_MS) {
      this._skipping = true;
    }
    if (this._skipping) {
      if (!frame.key) return void this._late++;
      this._skipping = false;
    }
    output.feed(frame);
  }
}

// --- outputs --------------------------------------------------------------------------------------

/** Whether a stream's pictures come in decode order = presentation order (no B-frames). */
class FrameOrder {
  constructor() {
    /** @type {number|null} pts of the previous frame, µs */
    this.lastPts = null;
    /** @type {boolean} a picture came before one decoded ahead of it: the stream reorders */
    this.reordered = false;
    /** @type {number} frames since the last keyframe */
    this.sinceKey = 0;
    /** @type {boolean} the last whole GOP came in presentation order, and nothing since */
    this.inOrder = false;
  }

  /**
   * Takes every frame, in decode order; returns its pts minus the previous frame's (µs; 0 for
   * the first).
   * @param {Frame} frame
   */
  see(frame) {
    const delta = this.lastPts === null ? 0 : frame.pts - this.lastPts;
    this.lastPts = frame.pts;
    if (delta < 0 && !frame.key) this.reordered = true;
    if (frame.key) {
      this.inOrder = this.sinceKey > 0 && !this.reordered;
      this.sinceKey = 0;
    } else {
      this.sinceKey++;
      if (this.reordered) this.inOrder = false;
    }
    return delta;
  }
}

// --- WebCodecs ----------------------------------------------------------------------------------

/**
 * VideoDecoder output: decodes every frame, paints only the newest one on a canvas in
 * requestAnimationFrame. H.264 goes in as avcC `description` + length-prefixed samples (what
 * Safari requires; every engine accepts it); other codecs as Annex B.
 */
class WebCodecsOutput {
  /** @param {Init} init */
  static async supports(init) {
    if (!self.VideoDecoder) return false;
    try {
      return !!(await VideoDecoder.isConfigSupported(decoderConfig(init))).supported;
    } catch (e) {
      return false; // an invalid codec string throws: unsupported
    }
  }

  /**
   * @param {HTMLCanvasElement} canvas where pictures are painted
   * @param {(message: string) => void} onError reports a decoding failure (an `error` event);
   *     playing goes on at the next keyframe
   */
  constructor(canvas, onError) {
    /** @type {'webcodecs'} */
    this.mode = 'webcodecs';
    /** @type {HTMLCanvasElement} */
    this._canvas = canvas;
    /** @type {CanvasRenderingContext2D} */
    this._context = canvas.getContext('2d', { alpha: false });
    /** @type {(message: string) => void} */
    this._onError = onError;
    /** @type {VideoDecoderConfig|null} from the init, without description; null before configure */
    this._config = null;
    /**
     * @type {Syntax|null} H.264 and H.265: configure with an avcC / hvcC description, feed
     *     length-prefixed samples; null (other codecs): Annex B, no description
     */
    this._syntax = null;
    /**
     * @type {VideoDecoder|null} made at the first keyframe; null or closed while suspended,
     *     after an error, or when the browser reclaimed it: made again at the next keyframe
     */
    this._decoder = null;
    /** @type {Uint8Array|null} the avcC / hvcC the decoder is configured with; null: none yet */
    this._description = null;
    /** @type {boolean} (re)started at a keyframe, no trailing picture yet: RASL pictures are dropped */
    this._leading = false;
    /** @type {FrameOrder} whether the stream reorders: decides the avcC's SPS */
    this._order = new FrameOrder();
    /** @type {boolean} frames are dropped until the next keyframe */
    this._needKey = true;
    /** @type {boolean} the catch-up burst is being decoded: a long queue is not falling behind */
    this._catchingUp = false;
    /** @type {Map<number, number>} pts (µs) -> ingest time (ms since the epoch), frames in the decoder */
    this._ingestOf = new Map();
    /** @type {Set<number>} pts (µs) of catch-up frames in the decoder: decode, never paint */
    this._catchupPts = new Set();
    /** @type {VideoFrame|null} the newest decoded frame, waiting for the next animation frame */
    this._pending = null;
    /** @type {number} its ingest time, ms since the epoch; 0: unknown */
    this._pendingIngest = 0;
    /** @type {number} requestAnimationFrame id of the next paint, or 0 */
    this._paintRequest = 0;
    /** @type {number} frames the decoder gave back */
    this._decoded = 0;
    /** @type {number} frames skipped, not decoded */
    this._dropped = 0;
    /** @type {number} frames painted */
    this._painted = 0;
    /** @type {number} ms from the relay's ingest to the last paint */
    this._latency = 0;
    /** @type {number[]} the same for each frame painted since takeLatencies() */
    this._latencies = [];
    this._paint = this._paint.bind(this);
  }

  takeLatencies() {
    const latencies = this._latencies;
    this._latencies = [];
    return latencies;
  }

  /** @returns {OutputStats} */
  get stats() {
    const { _decoded: decoded, _dropped: dropped, _painted: painted, _latency: latency } = this;
    return { decoded, dropped, painted, latency };
  }

  /** @param {Init} init */
  async configure(init) {
    this._config = decoderConfig(init);
    this._syntax = syntaxOf(this._config.codec);
    this._needKey = true;
    const decoder = this._decoder;
    if (decoder && decoder.state !== 'closed') decoder.reset(); // drop what the old stream queued
    this._description = null; // configured at the next keyframe, from its SPS and PPS
    this._order = new FrameOrder();
    this._ingestOf.clear();
    this._catchupPts.clear();
    return true;
  }

  /** @param {Frame} frame */
  feed(frame) {
    this._order.see(frame);
    if (frame.key) this._leading = this._needKey;
    else if (this._needKey) return void this._dropped++;
    this._needKey = false;
    let decoder = this._decoder;
    if (!decoder || decoder.state === 'closed') {
      if (!frame.key) return this._skip();
      decoder = this._decoder = this._newDecoder();
    }
    if (frame.key && !frame.catchup && decoder.state === 'configured' &&
        decoder.decodeQueueSize > DECODE_QUEUE_MAX) {
      // So far behind that even this keyframe would wait its turn: drop what is queued, start
      // here (a slow machine plays fewer pictures, never later ones).
      this._dropped += decoder.decodeQueueSize;
      decoder.reset();
      this._ingestOf.clear();
      this._catchupPts.clear();
      this._catchingUp = false;
    }
    const syntax = this._syntax;
    let data = frame.data;
    let description;
    if (syntax) {
      const units = splitNals(data);
      if (raslAfterStart(this, syntax, frame, units)) return void this._dropped++;
      if (frame.key) {
        description = syntax.config(units, this._order.inOrder);
        if (!description) return this._skip();
        // The parameter sets travel in the description (what `avc1`/`hvc1` mean): no copies.
        data = lengthPrefixed(withoutSets(syntax, units));
      } else data = lengthPrefixed(units);
    }
    const changed = syntax && !sameBytes(description, this._description); // new parameter sets
    if (frame.key && (decoder.state !== 'configured' || changed)) {
      try {
        decoder.configure({ ...this._config, description });
        this._description = description || null;
      } catch (e) {
        this._onError('decoder: ' + e.message);
        return this._skip();
      }
    }
    if (decoder.state !== 'configured') return this._skip();
    const queued = decoder.decodeQueueSize;
    if (frame.catchup) this._catchingUp = true;
    else if (this._catchingUp && queued <= DECODE_QUEUE_MAX) this._catchingUp = false;
    if (!frame.key && !this._catchingUp && queued > DECODE_QUEUE_MAX) {
      return this._skip(); // decoding can't keep up: skip to the next keyframe, don't drift behind
    }
    if (this._ingestOf.size > 300) this._ingestOf.clear(); // only if the decoder swallowed frames
    this._ingestOf.set(frame.pts, frame.ingest);
    if (frame.catchup) this._catchupPts.add(frame.pts);
    try {
      decoder.decode(new EncodedVideoChunk({
        type: frame.key ? 'key' : 'delta',
        timestamp: frame.pts,
        data,
      }));
    } catch (e) {
      this._needKey = true;
      this._onError('decode: ' + e.message);
    }
  }

  suspend() {
    this._closeDecoder();
    this._pending?.close();
    this._pending = null;
    cancelAnimationFrame(this._paintRequest);
    this._paintRequest = 0;
  }

  close() {
    this.suspend(); // the canvas keeps the last picture: it belongs to the element
  }

  _skip() {
    this._needKey = true;
    this._dropped++;
  }

  _newDecoder() {
    const decoder = new VideoDecoder({
      output: (picture) => {
        if (decoder === this._decoder) this._onPicture(picture);
        else picture.close();
      },
      error: (e) => {
        if (decoder !== this._decoder) return;
        this._decoder = null; // made again at the next keyframe
        this._needKey = true;
        // The spec lets a browser reclaim (close) an inactive or background decoder: expected,
        // not a failure.
        if (e.name !== 'QuotaExceededError') this._onError('decoder: ' + e.message);
      },
    });
    this._description = null;
    return decoder;
  }

  _closeDecoder() {
    const decoder = this._decoder;
    this._decoder = null;
    this._needKey = true;
    if (decoder && decoder.state !== 'closed') decoder.close();
  }

  /** @param {VideoFrame} picture */
  _onPicture(picture) {
    this._decoded++;
    const pts = picture.timestamp;
    const ingest = this._ingestOf.get(pts) || 0;
    this._ingestOf.delete(pts);
    if (this._catchupPts.delete(pts)) return picture.close();
    this._pending?.close(); // replaced before it was painted
    this._pending = picture;
    this._pendingIngest = ingest;
    if (!this._paintRequest) this._paintRequest = requestAnimationFrame(this._paint);
  }

  _paint() {
    this._paintRequest = 0;
    const picture = this._pending;
    if (!picture) return;
    this._pending = null;
    const canvas = this._canvas;
    const width = picture.displayWidth;
    const height = picture.displayHeight;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    this._context.drawImage(picture, 0, 0, width, height);
    picture.close();
    this._painted++;
    if (this._pendingIngest) {
      this._latency = Date.now() - this._pendingIngest;
      if (this._latencies.length < 500) this._latencies.push(this._latency);
    }
  }
}

function noPicture() {
  return Promise.reject(new Error('snapshot: no picture on screen yet'));
}

/** @param {Init} init */
function decoderConfig(init) {
  const config = { codec: entryCodec(String(init.codec || '')), optimizeForLatency: true };
  if (init.width && init.height) {
    config.codedWidth = init.width;
    config.codedHeight = init.height;
  }
  return config;
}

// --- Media Source Extensions --------------------------------------------------------------------

/**
 * Media Source Extensions output (ManagedMediaSource first: iPhone): muxes H.264 or H.265 into
 * fragmented MP4 (`avc1`/`hvc1`), one moof+mdat per access unit, and keeps the playhead at the
 * live edge.
 */
class MseOutput {
  /** @param {Init} init */
  static supports(init) {
    const codec = String(init.codec || '');
    return !!syntaxOf(codec) && !!MediaSourceClass?.isTypeSupported(mp4Type(entryCodec(codec)));
  }

  /**
   * @param {HTMLVideoElement} video where pictures are shown
   * @param {(message: string) => void} onFailure the output broke: it has let go of its
   *     MediaSource; configure it again to start afresh
   */
  constructor(video, onFailure) {
    /** @type {'mse'} */
    this.mode = 'mse';
    /** @type {HTMLVideoElement} */
    this._video = video;
    /** @type {(message: string) => void} */
    this._onFailure = onFailure;
    /** @type {MediaSource|null} ManagedMediaSource where there is one */
    this._mediaSource = null;
    /** @type {string|null} object URL of the MediaSource, until it opens */
    this._objectUrl = null;
    /** @type {SourceBuffer|null} */
    this._sourceBuffer = null;
    /** @type {string} the SourceBuffer's MIME type */
    this._type = '';
    /** @type {Init|null} */
    this._init = null;
    /** @type {Syntax} the stream's codec (H.264 or H.265) */
    this._syntax = AVC;
    /** @type {Uint8Array|null} avcC / hvcC of the last init segment; null: build from the next keyframe */
    this._description = null;
    /** @type {Uint8Array[]} init segment and fragments waiting for the SourceBuffer */
    this._queue = [];
    /** @type {boolean} the newest queued fragment is a live frame, not catch-up */
    this._queueLive = false;
    /** @type {boolean} the newest fragment being appended is a live frame */
    this._appendingLive = false;
    /** @type {boolean} after the next append of a live frame, jump to the newest picture */
    this._jump = true;
    /** @type {boolean} map the next keyframe's pts to the end of our timeline */
    this._anchor = true;
    /** @type {number} camera pts at the anchor, µs */
    this._anchorPts = 0;
    /** @type {number} our timeline at the anchor, 90 kHz ticks */
    this._anchorTime = 0;
    /** @type {FrameOrder} B-frames (decode order differs from presentation) or not */
    this._order = new FrameOrder();
    /** @type {number} frame duration, 90 kHz ticks: 25 fps until pts deltas tell better */
    this._frameTicks = 3600;
    // Our own 90 kHz timeline, continuous across reconnects (the camera's clock restarts); it
    // starts again with each SourceBuffer.
    /** @type {number} decode time of the last fragment, 90 kHz ticks */
    this._decodeTime = -1;
    /** @type {number} highest presentation end so far, 90 kHz ticks */
    this._end = 0;
    /** @type {number} moof sequence number */
    this._sequence = 0;
    /** @type {number[]} keyframe presentation times, s: the buffer is trimmed only up to one */
    this._keyTimes = [];
    /** @type {number} ingest time of the newest queued frame, ms since the epoch; 0: none */
    this._ingest = 0;
    /** @type {boolean} frames are dropped until the next keyframe */
    this._needKey = true;
    /** @type {boolean} (re)started at a keyframe, no trailing picture yet: RASL pictures are dropped */
    this._leading = false;
    /** @type {number} frames skipped, never appended */
    this._dropped = 0;
    video.disableRemotePlayback = true; // ManagedMediaSource wants no AirPlay alternative
    video.onerror = () => {
      if (this._mediaSource) this._fail('video: ' + (video.error?.message || 'playback error'));
    };
  }

  /** @returns {OutputStats} */
  get stats() {
    const quality = this._video.getVideoPlaybackQuality?.();
    const decoded = quality ? quality.totalVideoFrames : 0;
    return {
      decoded,
      dropped: this._dropped,
      painted: quality ? Math.max(0, decoded - quality.droppedVideoFrames) : 0, // WebKitGTK: dropped > total
      latency: this._ingest ? Date.now() - this._ingest + this._bufferedAhead() * 1000 : 0,
    };
  }

  takeLatencies() {
    return this._ingest ? [this.stats.latency] : []; // the video element paints on its own
  }

  /** @param {Init} init */
  async configure(init) {
    const type = mp4Type(entryCodec(init.codec));
    this._init = init;
    this._syntax = syntaxOf(init.codec);
    this._description = null; // init segment from the SPS/PPS of the next keyframe
    this._queue = [];
    this._needKey = true;
    this._jump = true;
    this._anchor = true; // map the new stream's pts onto our timeline at its first keyframe
    this._order = new FrameOrder();
    this._frameTicks = 3600;
    if (this._sourceBuffer && this._type !== type) {
      try {
        this._sourceBuffer.changeType(type);
        this._type = type;
      } catch (e) {
        this._detach();
      }
    }
    if (this._sourceBuffer) return true;
    const mediaSource = (this._mediaSource = new MediaSourceClass());
    this._objectUrl = URL.createObjectURL(mediaSource);
    this._video.src = this._objectUrl;
    await new Promise((opened) => (mediaSource.onsourceopen = opened));
    this._revokeUrl();
    if (mediaSource !== this._mediaSource) return false;
    let sourceBuffer;
    try {
      sourceBuffer = mediaSource.addSourceBuffer(type);
    } catch (e) {
      this._detach();
      throw new Error(`MSE: no SourceBuffer for ${init.codec}: ${e.message}`);
    }
    this._sourceBuffer = sourceBuffer;
    this._type = type;
    sourceBuffer.onupdateend = () => this._onAppended();
    this._decodeTime = -1;
    this._end = 0;
    this._sequence = 0;
    this._keyTimes = [];
    return true;
  }

  /** @param {Frame} frame */
  feed(frame) {
    const delta = this._order.see(frame);
    if (frame.key) this._leading = this._needKey;
    else if (this._needKey) return void this._dropped++;
    this._needKey = false;
    const syntax = this._syntax;
    let units = splitNals(frame.data);
    if (raslAfterStart(this, syntax, frame, units)) return void this._dropped++;
    if (frame.key) {
      // A new init segment whenever the parameter sets change; in the samples they would
      // only repeat (or contradict) the avcC / hvcC.
      const description = syntax.config(units, this._order.inOrder);
      if (!description) return this._skip();
      if (!sameBytes(description, this._description)) {
        this._description = description;
        const { width, height } = this._init;
        this._queue.push(initSegment(syntax, description, width, height));
      }
      units = withoutSets(syntax, units);
    } else if (!this._description) return this._skip();
    // Right after the catch-up burst the queue is long and the playhead has yet to jump to the
    // newest picture: that is not falling behind.
    // Nor is a queue that grows while the video element seeks: WebKit decodes from the keyframe
    // to get there, seconds into a long GOP, and holds appends meanwhile.
    const ahead = this._jump ? 0 : this._bufferedAhead();
    const seeking = this._video.seeking;
    if (!frame.key && !frame.catchup && !this._jump && !seeking &&
      (this._queue.length > 20 || ahead > 3)) {
      this._anchor = true; // the video element can't keep up: skip to the next keyframe
      return this._skip();
    }
    const ticks = this._timing(frame, delta);
    const composition = Math.round(this._anchorTime + (frame.pts - this._anchorPts) * 0.09);
    // Decode times are the presentation times (composition offset 0, so a decoder has no reason
    // to hold frames back), held back by two frames only once B-frames reorder them.
    const decode = Math.max(this._decodeTime + 1,
      composition - (this._order.reordered ? 2 * this._frameTicks : 0));
    if (frame.key) this._keyTimes.push(composition / 90000);
    this._queue.push(fragment(++this._sequence, decode, composition - decode, ticks, frame.key,
      units));
    this._decodeTime = decode;
    this._end = Math.max(this._end, composition + ticks);
    this._queueLive = !frame.catchup;
    this._ingest = frame.ingest;
    if (frame.key && !frame.catchup && !this._jump && ahead > 1) this._jump = true; // after a skip
    this._append();
  }

  suspend() {
    // The MediaSource stays, so does the last picture; close() lets go of it.
  }

  close() {
    this._detach();
    this._video.onerror = null;
  }

  _skip() {
    this._needKey = true;
    this._dropped++;
  }

  // Sample duration from pts deltas (the smallest one once B-frames show up); re-anchors the
  // pts -> timeline mapping on a new stream, after a skip, or when the camera's clock jumps.
  _timing(frame, delta) {
    const ticks = delta * 0.09;
    if (ticks > 450 && ticks < 90000) {
      this._frameTicks = Math.round(this._order.reordered ? Math.min(this._frameTicks, ticks) : ticks);
    }
    const composition = this._anchorTime + (frame.pts - this._anchorPts) * 0.09;
    if (frame.key && (this._anchor || Math.abs(composition - this._end) > 90000)) {
      this._anchor = false;
      this._anchorPts = frame.pts;
      this._anchorTime = this._end;
    }
    return this._frameTicks;
  }

  _append() {
    const sourceBuffer = this._sourceBuffer;
    if (!sourceBuffer || sourceBuffer.updating || !this._queue.length) return;
    const parts = this._queue;
    this._queue = [];
    this._appendingLive = this._queueLive;
    try {
      sourceBuffer.appendBuffer(parts.length === 1 ? parts[0] : concat(parts));
    } catch (e) {
      if (e.name !== 'QuotaExceededError') return this._fail('MSE: ' + e.message);
      this._needKey = true; // buffer full: free some, go on from the next keyframe
      this._anchor = true;
      this._trim(true);
    }
  }

  _fail(message) {
    this._detach();
    this._onFailure(message);
  }

  _bufferedAhead() {
    const buffered = this._video.buffered;
    return buffered.length ? buffered.end(buffered.length - 1) - this._video.currentTime : 0;
  }

  // After every append: keep the playhead at the live edge, trim old buffer, append what queued.
  _onAppended() {
    // `updating` turns false before this event is dispatched, so a frame that came in between
    // may have started the next append: wait for its end (what it holds decides the jump).
    if (this._sourceBuffer?.updating) return;
    const video = this._video;
    const buffered = video.buffered;
    if (buffered.length && !video.seeking) {
      const start = buffered.start(buffered.length - 1);
      const end = buffered.end(buffered.length - 1);
      const now = video.currentTime;
      const key = this._keyTimes[this._keyTimes.length - 1];
      if (this._jump && this._appendingLive) {
        this._jump = false; // catch-up appended: to the newest picture
        video.currentTime = Math.max(start, end - 0.05);
      } else if (now < start || key - now > LIVE_JUMP_S) {
        // Far behind: to the newest keyframe. A seek between keyframes decodes from the one
        // before it, which a busy WebKit takes longer over than the lag it removes: it would
        // seek again and again and never play. A smaller lag goes by playing faster.
        video.currentTime = Math.max(start, key);
      }
      const behind = end - video.currentTime;
      const rate = behind > LIVE_FAST_S ? LIVE_RATE : behind < LIVE_NEAR_S ? 1 : video.playbackRate;
      if (video.playbackRate !== rate) video.playbackRate = rate;
      if (video.paused) video.play().catch(() => {});
    }
    if (!this._trim(false)) this._append();
  }

  // Remove old media, but only up to a keyframe: removing a keyframe would remove its GOP.
  _trim(force) {
    const sourceBuffer = this._sourceBuffer;
    const buffered = this._video.buffered;
    if (!sourceBuffer || sourceBuffer.updating || !buffered.length) return false;
    const keep = this._video.currentTime - (force ? 0.5 : 3);
    if (!force && keep - buffered.start(0) < 20) return false;
    let cut = 0;
    while (this._keyTimes.length && this._keyTimes[0] <= keep) cut = this._keyTimes.shift();
    if (cut <= buffered.start(0)) return false;
    this._keyTimes.unshift(cut);
    sourceBuffer.remove(0, cut);
    return true;
  }

  _revokeUrl() {
    if (this._objectUrl) URL.revokeObjectURL(this._objectUrl);
    this._objectUrl = null;
  }

  // Let go of the MediaSource (and with it the picture).
  _detach() {
    const mediaSource = this._mediaSource;
    if (!mediaSource) return;
    this._mediaSource = this._sourceBuffer = null;
    this._queue = [];
    try {
      if (mediaSource.readyState === 'open') mediaSource.endOfStream();
    } catch (e) {
      // already detached
    }
    mediaSource.onsourceopen = null;
    this._revokeUrl();
    this._video.removeAttribute('src');
    this._video.load();
  }
}

// --- H.264 / H.265 bitstream helpers ---------------------------------------------------------

/**
 * What the player needs to know of a codec's bitstream: NAL unit types, which of them are
 * parameter sets (they travel in the decoder configuration record, not in the samples), how to
 * build that record (avcC / hvcC) from a keyframe's NAL units, and the MP4 sample entry.
 * @typedef {object} Syntax
 * @property {(unit: Uint8Array) => number} type   nal_unit_type
 * @property {number[]} sets                        parameter set types, in record order
 * @property {(units: Uint8Array[], inOrder: boolean) => Uint8Array|null} config  the record,
 *     or null; `inOrder`: the stream was seen in presentation order (see avcConfig)
 * @property {string} entry                         sample entry ('avc1' | 'hvc1')
 * @property {string} record                        its configuration box ('avcC' | 'hvcC')
 * @property {string} name                          for people: 'H.264' | 'H.265'
 */

/** @type {Syntax} */
const AVC = { type: (unit) => unit[0] & 31, sets: [7, 8], config: avcConfig, entry: 'avc1',
  record: 'avcC', name: 'H.264' };
/** @type {Syntax} */
const HEVC = { type: (unit) => (unit[0] >> 1) & 63, sets: [32, 33, 34], config: hvcConfig,
  entry: 'hvc1', record: 'hvcC', name: 'H.265' };

/** e.g. 'H.265 (hvc1.1.6.L93.B0)', for people */
const codecName = (codec) => (syntaxOf(codec) ? `${syntaxOf(codec).name} (${codec})` : codec || 'an unknown codec');

/** @returns {Syntax|null} for an RFC 6381 codec string: H.264 and H.265 only */
const syntaxOf = (codec) => (/^avc[13]\./.test(codec) ? AVC : /^(hvc1|hev1)\./.test(codec) ? HEVC : null);

// The player always sends a complete record and keeps parameter sets out of keyframes' samples:
// what `avc1`/`hvc1` mean (`avc3`/`hev1`: parameter sets in band), and all Safari plays.
const entryCodec = (codec) => codec.replace(/^avc3/, 'avc1').replace(/^hev1/, 'hvc1');

/** Keyframe NAL units without the parameter sets the record carries */
const withoutSets = (syntax, units) => units.filter((unit) => !syntax.sets.includes(syntax.type(unit)));

/** A record's units of one type: the units of that type, at most `max` */
const ofType = (syntax, units, type, max) => units.filter((unit) => syntax.type(unit) === type).slice(0, max);

/**
 * Whether to drop this frame: an H.265 RASL picture (NAL types 8, 9) right after the output
 * (re)started at a CRA keyframe references pictures from before it, which the decoder never got.
 * A decoder that starts at the CRA drops them (H.265 8.1.3); one that keeps going after a skip
 * would decode garbage. `output._leading`: (re)started at a keyframe, no trailing picture yet.
 * @param {{_leading: boolean}} output
 * @param {Syntax} syntax
 * @param {Frame} frame
 * @param {Uint8Array[]} units
 */
function raslAfterStart(output, syntax, frame, units) {
  if (!output._leading || frame.key || syntax !== HEVC) return false;
  const slice = units.map(HEVC.type).find((type) => type < 32);
  if (slice === 8 || slice === 9) return true;
  if (slice < 6) output._leading = false; // a trailing picture: no more leading ones
  return false;
}

// Annex B -> NAL units (start codes and trailing zero bytes removed)
function splitNals(bytes) {
  const out = [];
  let start = -1;
  for (let i = 0; i + 2 < bytes.length; i++) {
    if (bytes[i] === 0 && bytes[i + 1] === 0 && bytes[i + 2] === 1) {
      if (start >= 0) out.push(trimEnd(bytes, start, i));
      start = i += 3;
      i--;
    }
  }
  if (start >= 0) out.push(trimEnd(bytes, start, bytes.length));
  return out.filter((unit) => unit.length);
}

function trimEnd(bytes, start, end) {
  while (end > start && bytes[end - 1] === 0) end--;
  return bytes.subarray(start, end);
}

/** NAL units -> one sample: each unit behind its 4-byte length */
const lengthPrefixed = (units) => concat(units.flatMap((unit) => [u32(unit.length), unit]));

// At most `count` of `items`, spread evenly over them.
function evenly(items, count) {
  if (items.length <= count) return items;
  return Array.from({ length: count }, (_, i) => items[Math.floor((i * items.length) / count)]);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function sameBytes(a, b) {
  if (!a || !b || a.length !== b.length) return a === b;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// profile_idc values whose SPS carries chroma_format_idc and bit depths (High and up)
const HIGH_PROFILES = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

/**
 * AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3) from a keyframe's SPS and PPS: the
 * WebCodecs `description` and the body of the MP4 `avcC` box. Null without both. An SPS that
 * does not say how many pictures a decoder must hold back for reordering is given
 * `max_num_reorder_frames` 0 when the stream cannot reorder (POC type 2) or `inOrder` says it
 * was seen not to (a whole GOP in presentation order): without it some decoders hold back a
 * whole DPB (WebKit: docs/player.md).
 * @param {Uint8Array[]} units
 * @param {boolean} inOrder
 */
function avcConfig(units, inOrder) {
  const sps = ofType(AVC, units, 7, 31);
  const pps = ofType(AVC, units, 8, 255);
  if (!sps.length || !pps.length || sps[0].length < 4) return null;
  const [, profile, constraints, level] = sps[0];
  const parts = [u8([1, profile, constraints, level, 0xff, 0xe0 | sps.length])];
  let facts;
  for (const unit of sps) {
    const read = readSps(unit);
    facts ||= read;
    const fixed = read.reorderFree && (read.poc === 2 || inOrder) ? read.reorderFree : unit;
    parts.push(u16(fixed.length), fixed);
  }
  parts.push(u8([pps.length]));
  for (const unit of pps) parts.push(u16(unit.length), unit);
  if (HIGH_PROFILES.includes(profile)) {
    const { chroma, lumaDepth, chromaDepth } = facts;
    parts.push(u8([0xfc | (chroma & 3), 0xf8 | (lumaDepth & 7), 0xf8 | (chromaDepth & 7), 0]));
  }
  return concat(parts);
}

/**
 * Reads a NAL unit's RBSP from byte `start` on, emulation prevention bytes removed: `bits` (an
 * array of 0 and 1), `u(n)` the next n bits, `ue()` the next Exp-Golomb number, `at()` how
 * many bits were read. Reading past the end throws a RangeError.
 * @param {Uint8Array} unit
 * @param {number} start
 */
function rbspReader(unit, start) {
  const bits = [];
  for (let i = start, zeros = 0; i < unit.length; i++) {
    if (zeros >= 2 && unit[i] === 3) {
      zeros = 0; // emulation prevention byte
      continue;
    }
    zeros = unit[i] ? 0 : zeros + 1;
    for (let bit = 7; bit >= 0; bit--) bits.push((unit[i] >> bit) & 1);
  }
  let at = 0;
  const u = (n) => {
    let value = 0;
    for (; n > 0; n--) {
      if (at >= bits.length) throw new RangeError('NAL unit truncated');
      value = value * 2 + bits[at++];
    }
    return value;
  };
  const ue = () => {
    let zeros = 0;
    while (!u(1)) if (++zeros > 31) throw new RangeError('bad Exp-Golomb code');
    return 2 ** zeros - 1 + u(zeros);
  };
  return { bits, u, ue, at: () => at };
}

/**
 * HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3) from a keyframe's VPS, SPS and PPS
 * (each array complete: `hvc1`): the WebCodecs `description` and the body of the MP4 `hvcC` box.
 * What a relay cannot know without reading more of the stream is written as "unknown", as
 * cxrelay.h265.build_hvcc does: min_spatial_segmentation_idc, parallelismType, frame rate 0.
 * Null without all three, or with an SPS that can't be read. (H.265 SPSs always say how many
 * pictures a decoder must hold back: nothing to add, unlike H.264's.)
 * @param {Uint8Array[]} units
 */
function hvcConfig(units) {
  const sets = HEVC.sets.map((type) => ofType(HEVC, units, type, 65535));
  if (sets.some((list) => !list.length)) return null;
  try {
    const { u, ue } = rbspReader(sets[1][0], 2);
    u(4); // sps_video_parameter_set_id
    const subLayers = u(3); // sps_max_sub_layers_minus1
    const nesting = u(1); // sps_temporal_id_nesting_flag
    const ptl = []; // general profile, tier and level: 12 bytes
    for (let i = 0; i < 12; i++) ptl.push(u(8));
    const present = []; // sub_layer_profile_present_flag, sub_layer_level_present_flag
    for (let i = 0; i < subLayers; i++) present.push(u(2));
    if (subLayers) u(2 * (8 - subLayers));
    for (const flags of present) u((flags >> 1) * 88 + (flags & 1) * 8);
    ue(); // sps_seq_parameter_set_id
    const chroma = ue();
    if (chroma === 3) u(1); // separate_colour_plane_flag
    ue(); // pic_width_in_luma_samples
    ue(); // pic_height_in_luma_samples
    if (u(1)) for (let i = 0; i < 4; i++) ue(); // conformance window offsets
    return concat([u8([1, ...ptl, 0xf0, 0, 0xfc, 0xfc | (chroma & 3), 0xf8 | (ue() & 7),
      0xf8 | (ue() & 7), 0, 0, ((subLayers + 1) << 3) | (nesting << 2) | 3, 3]),
    ...sets.flatMap((list, i) => [u8([0x80 | HEVC.sets[i]]), u16(list.length),
      ...list.flatMap((unit) => [u16(unit.length), unit])])]);
  } catch (e) {
    return null; // unreadable SPS
  }
}

/**
 * What the player needs from an SPS (H.264 7.3.2.1.1, E.1.1): chroma format and bit depths
 * (for avcC), the POC type, and `reorderFree`, a copy with a VUI bitstream_restriction that
 * lets a decoder hold no picture back (max_num_reorder_frames 0, max_dec_frame_buffering =
 * max_num_ref_frames, as libwebrtc writes it), or null when the SPS already has one or can't
 * be read.
 * @param {Uint8Array} sps
 */
function readSps(sps) {
  const facts = { chroma: 1, lumaDepth: 0, chromaDepth: 0, poc: 0, reorderFree: null };
  const { bits, u, ue, at } = rbspReader(sps, 1);
  const hrd = () => {
    let count = ue() + 1;
    u(8); // bit_rate_scale, cpb_size_scale
    for (; count > 0; count--) {
      ue(); // bit_rate_value_minus1
      ue(); // cpb_size_value_minus1
      u(1); // cbr_flag
    }
    u(20); // four delay lengths
  };
  try {
    const profile = u(8);
    u(16); // constraint flags, level_idc
    ue(); // seq_parameter_set_id
    if (HIGH_PROFILES.includes(profile)) {
      facts.chroma = ue();
      if (facts.chroma === 3) u(1); // separate_colour_plane_flag
      facts.lumaDepth = ue();
      facts.chromaDepth = ue();
      u(1); // qpprime_y_zero_transform_bypass_flag
      if (u(1)) { // seq_scaling_matrix_present_flag: skip the scaling lists
        for (let list = 0; list < (facts.chroma === 3 ? 12 : 8); list++) {
          if (!u(1)) continue;
          for (let j = 0, last = 8, next = 8; j < (list < 6 ? 16 : 64) && next; j++) {
            const code = ue(); // delta_scale, se(v)
            next = (last + (code & 1 ? (code + 1) / 2 : -code / 2) + 256) % 256;
            last = next || last;
          }
        }
      }
    }
    ue(); // log2_max_frame_num_minus4
    facts.poc = ue();
    if (facts.poc === 0) ue(); // log2_max_pic_order_cnt_lsb_minus4
    else if (facts.poc === 1) {
      u(1); // delta_pic_order_always_zero_flag
      ue(); // offset_for_non_ref_pic
      ue(); // offset_for_top_to_bottom_field
      for (let n = ue(); n > 0; n--) ue(); // offset_for_ref_frame[]
    }
    const refs = ue(); // max_num_ref_frames
    u(1); // gaps_in_frame_num_value_allowed_flag
    ue(); // pic_width_in_mbs_minus1
    ue(); // pic_height_in_map_units_minus1
    if (!u(1)) u(1); // frame_mbs_only_flag, mb_adaptive_frame_field_flag
    u(1); // direct_8x8_inference_flag
    if (u(1)) for (let i = 0; i < 4; i++) ue(); // frame cropping offsets
    let head; // the bits up to bitstream_restriction_flag
    if (u(1)) { // vui_parameters_present_flag
      if (u(1) && u(8) === 255) u(32); // aspect ratio, with an explicit SAR
      if (u(1)) u(1); // overscan
      if (u(1)) { // video_signal_type_present_flag
        u(4); // video_format, video_full_range_flag
        if (u(1)) u(24); // colour description
      }
      if (u(1)) for (let i = 0; i < 2; i++) ue(); // chroma sample location
      if (u(1)) u(65); // timing: num_units_in_tick, time_scale, fixed_frame_rate_flag
      const nalHrd = u(1);
      if (nalHrd) hrd();
      const vclHrd = u(1);
      if (vclHrd) hrd();
      if (nalHrd || vclHrd) u(1); // low_delay_hrd_flag
      u(1); // pic_struct_present_flag
      if (u(1)) return facts; // bitstream_restriction_flag: it says already
      head = bits.slice(0, at() - 1);
    } else {
      // a VUI with nothing in it but the restriction: eight "not present" flags
      head = [...bits.slice(0, at() - 1), 1, 0, 0, 0, 0, 0, 0, 0, 0];
    }
    const ueBits = (value) => {
      const code = (value + 1).toString(2);
      return [...'0'.repeat(code.length - 1) + code].map(Number);
    };
    // bitstream_restriction_flag, motion_vectors_over_pic_boundaries_flag, max_bytes_per_pic_denom 2,
    // max_bits_per_mb_denom 1, log2 max mv lengths 16, max_num_reorder_frames 0,
    // max_dec_frame_buffering, then rbsp_trailing_bits
    const out = [...head, 1, 1, ...ueBits(2), ...ueBits(1), ...ueBits(16), ...ueBits(16),
      ...ueBits(0), ...ueBits(refs), 1];
    while (out.length % 8) out.push(0);
    const bytes = [sps[0]];
    for (let i = 0, zeros = 0; i < out.length; i += 8) {
      const byte = parseInt(out.slice(i, i + 8).join(''), 2);
      if (zeros >= 2 && byte <= 3) {
        bytes.push(3); // emulation prevention
        zeros = 0;
      }
      bytes.push(byte);
      zeros = byte ? 0 : zeros + 1;
    }
    facts.reorderFree = u8(bytes);
  } catch (e) {
    // unreadable: leave it as the camera sent it
  }
  return facts;
}

// --- fragmented MP4 ------------------------------------------------------------------------------

const u8 = (a) => new Uint8Array(a);
const u16 = (n) => u8([(n >> 8) & 255, n & 255]);
const u32 = (n) => u8([n >>> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255]);
const zeros = (n) => new Uint8Array(n);
const str = (s) => u8([...s].map((c) => c.charCodeAt(0)));
const MATRIX = [0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000].map(u32);
const box = (type, ...parts) => concat([u32(8 + parts.reduce((n, p) => n + p.length, 0)), str(type), ...parts]);
const full = (type, vf, ...parts) => box(type, u32(vf), ...parts);

// ftyp + moov for one H.264 or H.265 track on a 90 kHz timeline, of unknown duration (live:
// Chromium then renders with low delay)
function initSegment(syntax, description, width, height) {
  const w = width || 0;
  const h = height || 0;
  const entry = box(syntax.entry, zeros(6), u16(1), zeros(16), u16(w), u16(h), u32(0x480000),
    u32(0x480000), zeros(4), u16(1), zeros(32), u16(0x18), u16(0xffff),
    box(syntax.record, description));
  const stbl = box('stbl', full('stsd', 0, u32(1), entry), full('stts', 0, u32(0)),
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
function fragment(sequence, decodeTime, offset, duration, key, units) {
  const data = lengthPrefixed(units);
  const mfhd = full('mfhd', 0, u32(sequence));
  const tfhd = full('tfhd', 0x20000, u32(1)); // default-base-is-moof
  const tfdt = full('tfdt', 0x1000000, u32(Math.floor(decodeTime / 2 ** 32)), u32(decodeTime >>> 0));
  const moofLength = 8 + mfhd.length + 8 + tfhd.length + tfdt.length + 36;
  // version 1: signed composition offsets. Flags: a keyframe depends on no other sample; any
  // other frame is not a sync sample.
  const trun = full('trun', 0x1000f01, u32(1), u32(moofLength + 8), u32(duration),
    u32(data.length), u32(key ? 0x2000000 : 0x1010000), u32(offset));
  return concat([box('moof', mfhd, box('traf', tfhd, tfdt, trun)), box('mdat', data)]);
}

// the camera's name in a /ws/<camera> URL
function cameraOf(url) {
  try {
    return decodeURIComponent(new URL(url).pathname.replace(/^.*\/ws\//, ''));
  } catch (e) {
    return url;
  }
}

if (!customElements.get('cxrelay-player')) customElements.define('cxrelay-player', CxrelayPlayer);
