// circus-events websocket client: no dependencies, served by the hub at .../client.js.
//
//   const events = new CircusEvents("wss://example.org/events");
//   events.subscribe("orders.*", (event) => console.log(event.channel, event.data));
//   events.publish("chat.room1", {text: "hi"});   // if the server's can_publish allows
//   events.addEventListener("gap", (e) => console.warn("missed", e.detail));
//
// Reconnects by itself with jittered exponential backoff (0.5 s doubling to
// 30 s; back to 0.5 s only after a connection that lasted 5 s and did not end
// with 1013) and resumes every subscription from the last event id it saw: in
// stream mode the hub replays what was missed, in pub/sub mode it answers
// with a "gap" frame. Events: "open" (detail: socket_id), "close" (detail:
// {code, reason}), "gap", "error" (server error frames), "event" (every event).
(function (root) {
  "use strict";

  const MIN_DELAY = 500;
  const MAX_DELAY = 30000;
  // Close codes after which reconnecting cannot help.
  const FINAL_CODES = new Set([1008]);
  // A connection must last this long before the backoff starts over: a server
  // that welcomes then closes at once (1013: too slow, too many) is not hammered.
  const STABLE_AFTER = 5000;
  const TRY_AGAIN = 1013;

  class CircusEvents extends EventTarget {
    constructor(url, options) {
      super();
      options = options || {};
      this.url = url;
      this.minDelay = options.minDelay || MIN_DELAY;
      this.maxDelay = options.maxDelay || MAX_DELAY;
      this.stableAfter = options.stableAfter || STABLE_AFTER;
      this.socketId = null;
      this.closed = false;
      this._subs = new Map(); // pattern -> {handlers: Set, lastId, lastTime}
      this._outbox = [];
      this._attempt = 0;
      this._welcomedAt = null; // when the current connection got its welcome
      this._timer = null;
      this._connect();
    }

    subscribe(pattern, handler) {
      let sub = this._subs.get(pattern);
      if (!sub) {
        sub = { handlers: new Set(), lastId: null, lastTime: null };
        this._subs.set(pattern, sub);
        this._send({ type: "subscribe", pattern: pattern });
      }
      if (handler) sub.handlers.add(handler);
      return () => this.unsubscribe(pattern, handler);
    }

    unsubscribe(pattern, handler) {
      const sub = this._subs.get(pattern);
      if (!sub) return;
      if (handler) sub.handlers.delete(handler);
      if (!handler || sub.handlers.size === 0) {
        this._subs.delete(pattern);
        this._send({ type: "unsubscribe", pattern: pattern });
      }
    }

    publish(channel, data) {
      this._send({ type: "publish", channel: channel, data: data });
    }

    close() {
      this.closed = true;
      clearTimeout(this._timer);
      if (this._ws) this._ws.close(1000);
    }

    _send(message) {
      if (this._ws && this._ws.readyState === 1 && this.socketId !== null) {
        this._ws.send(JSON.stringify(message));
      } else if (message.type === "publish") {
        this._outbox.push(message); // sent once connected; subscriptions are re-sent anyway
      }
    }

    _connect() {
      const ws = new WebSocket(this.url);
      this._ws = ws;
      ws.onmessage = (message) => this._receive(message.data);
      ws.onclose = (close) => {
        this.socketId = null;
        this._emit("close", { code: close.code, reason: close.reason });
        if (this.closed || FINAL_CODES.has(close.code)) return;
        const lasted = this._welcomedAt === null ? 0 : Date.now() - this._welcomedAt;
        this._welcomedAt = null;
        if (lasted >= this.stableAfter && close.code !== TRY_AGAIN) this._attempt = 0;
        const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt++);
        this._timer = setTimeout(() => this._connect(), ceiling / 2 + Math.random() * ceiling / 2);
      };
    }

    _receive(text) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (error) {
        return;
      }
      if (frame.type === "event") {
        this._dispatchEvent(frame);
      } else if (frame.type === "welcome") {
        this.socketId = frame.socket_id;
        this._welcomedAt = Date.now();
        for (const [pattern, sub] of this._subs) {
          const message = { type: "subscribe", pattern: pattern };
          if (sub.lastId !== null) {
            message.last_id = sub.lastId;
            message.last_time = sub.lastTime;
          }
          this._ws.send(JSON.stringify(message));
        }
        const outbox = this._outbox;
        this._outbox = [];
        for (const message of outbox) this._ws.send(JSON.stringify(message));
        this._emit("open", frame.socket_id);
      } else if (frame.type === "gap") {
        this._emit("gap", frame);
      } else if (frame.type === "error") {
        this._emit("error", frame);
      }
    }

    _dispatchEvent(frame) {
      this._emit("event", frame);
      if (frame.direct) return;
      for (const [pattern, sub] of this._subs) {
        // One frame per server-side subscription: it names its pattern.
        if (frame.pattern !== undefined ? frame.pattern !== pattern : !matches(pattern, frame.channel)) continue;
        sub.lastId = frame.id;
        sub.lastTime = frame.time;
        for (const handler of sub.handlers) {
          try {
            handler(frame);
          } catch (error) {
            setTimeout(() => { throw error; });
          }
        }
      }
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }
  }

  // The hub's glob patterns (circus_events.protocol.Pattern): * ? [abc] [^a] [a-z].
  // Matched without RegExp: one pass with a single backtrack point (the last
  // "*"), so no pattern takes more than pattern x channel steps. A pattern the
  // hub would refuse (an unclosed "[", a stray "]", an empty class) matches nothing.
  const compiled = new Map();
  function parseClass(body) {
    const negate = body[0] === "^";
    if (negate) body = body.slice(1);
    if (body.length === 0) return null;
    const ranges = [];
    for (let i = 0; i < body.length; i++) {
      if (i + 2 < body.length && body[i + 1] === "-") {
        const [lo, hi] = [body[i], body[i + 2]].sort();
        ranges.push([lo, hi]);
        i += 2;
      } else ranges.push([body[i], body[i]]);
    }
    return { negate: negate, ranges: ranges };
  }
  function parse(pattern) {
    const chars = Array.from(pattern); // code points, as the hub counts them
    const tokens = [];
    for (let i = 0; i < chars.length; i++) {
      const c = chars[i];
      if (c === "*") {
        if (tokens.length === 0 || tokens[tokens.length - 1] !== "*") tokens.push("*");
      } else if (c === "?") tokens.push({ any: true });
      else if (c === "]") return null;
      else if (c === "[") {
        const end = chars.indexOf("]", i + 1);
        if (end < 0) return null;
        const set = parseClass(chars.slice(i + 1, end));
        if (set === null) return null;
        tokens.push(set);
        i = end;
      } else tokens.push({ literal: c });
    }
    return tokens;
  }
  function one(token, c) {
    if (token.any) return true;
    if (token.literal !== undefined) return token.literal === c;
    const inside = token.ranges.some(([lo, hi]) => lo <= c && c <= hi);
    return inside !== token.negate;
  }
  function matches(pattern, channel) {
    let tokens = compiled.get(pattern);
    if (tokens === undefined) {
      tokens = parse(pattern);
      compiled.set(pattern, tokens);
    }
    if (tokens === null) return false;
    const chars = Array.from(channel);
    let t = 0;
    let c = 0;
    let starT = -1;
    let starC = 0;
    while (c < chars.length) {
      if (t < tokens.length && tokens[t] === "*") {
        starT = t++;
        starC = c;
      } else if (t < tokens.length && one(tokens[t], chars[c])) {
        t++;
        c++;
      } else if (starT >= 0) {
        t = starT + 1; // the last "*" takes one more character
        c = ++starC;
      } else return false;
    }
    while (t < tokens.length && tokens[t] === "*") t++;
    return t === tokens.length;
  }

  CircusEvents.matches = matches;
  root.CircusEvents = CircusEvents;
  if (typeof module !== "undefined" && module.exports) module.exports = CircusEvents;
})(typeof globalThis !== "undefined" ? globalThis : this);
