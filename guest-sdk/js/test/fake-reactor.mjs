// A fake `twill:protocol/reactor` for the unit tests: a deterministic
// clock and the scheduled calls; `advance` fires due calls through the
// exports `serve` returns, as the host does (the clock moves first, as in
// Twisted's task.Clock.advance). `connectTcp` records its calls in
// `connects` and fails when a test sets `failNextConnect`.
let now = 0;
let seq = 0;
let heap = [];
let fire = null;

export function seconds() {
  return now;
}

class FakeCall {
  constructor(token, due) {
    this.token = token;
    this.due = due;
    this.live = true;
    this.dropped = false;
    this.push();
  }
  push() {
    heap.push([this.due, ++seq, this]);
    heap.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  }
  getTime() {
    if (this.dropped) throw new Error('getTime on a dropped delayed-call handle');
    return this.due;
  }
  [Symbol.dispose ?? Symbol.for('dispose')]() {
    this.dropped = true;
  }
  cancel() {
    const was = this.live;
    this.live = false;
    return was;
  }
  reset(secs) {
    if (this.live) {
      this.due = now + secs;
      this.push();
    }
    return this.live;
  }
  delay(secs) {
    if (this.live) {
      this.due = Math.max(now, this.due + secs);
      this.push();
    }
    return this.live;
  }
  active() {
    return this.live;
  }
}

export function callLater(delay, token) {
  if (typeof token !== 'bigint') throw new TypeError('token is a u64: a BigInt');
  return new FakeCall(token, now + delay);
}

/** Test control: start over, firing through `reactorCalls`. */
export function reset(reactorCalls) {
  now = 0;
  heap = [];
  fire = reactorCalls;
}

/** Test control: move the clock on by `secs` and fire what fell due. */
export function advance(secs) {
  now += secs;
  while (heap.length && heap[0][0] <= now + 1e-12) {
    const [due, , call] = heap.shift();
    if (!call.live || Math.abs(call.due - due) > 1e-12) continue;
    call.live = false;
    fire.timerFired(call.token);
  }
}

/** What ComponentizeJS throws when an import returns a `result`'s error. */
class ComponentError extends Error {
  constructor(value) {
    super(value);
    this.payload = value;
  }
}

/** Every connect-tcp call so far: [host, port, timeout, token]. */
export const connects = [];
let nextConnectError = null;

export function connectTcp(host, port, timeout, token) {
  if (typeof token !== 'bigint') throw new TypeError('token is a u64: a BigInt');
  if (typeof host !== 'string') throw new TypeError('host is a string');
  connects.push([host, port, timeout, token]);
  const error = nextConnectError;
  nextConnectError = null;
  if (error !== null) throw new ComponentError(error);
}

/** Test control: the next connectTcp returns err(message). */
export function failNextConnect(message) {
  nextConnectError = message;
}
