// Tests for app.js with the SDK's StringTransport: no host, no sockets.
//
//   npm test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StringTransport, connect } from '../node_modules/twill-guest/testing.js';
import { Commands } from '../app.js';

const text = (bytes) => new TextDecoder().decode(bytes);

test('answers each line however it is chunked', () => {
  const data = new TextEncoder().encode('hello\r\nPING\r\nQUIT\r\nnever\r\n');
  for (let size = 1; size <= data.length; size++) {
    const protocol = new Commands();
    const transport = connect(protocol, new StringTransport());
    for (let i = 0; i < data.length; i += size) protocol.dataReceived(data.subarray(i, i + size));
    assert.equal(text(transport.value()), 'HELLO\r\nPONG\r\nBYE\r\n', `chunks of ${size}`);
    assert.ok(transport.disconnecting);
  }
});

test('a line over 16384 bytes closes the connection', () => {
  const protocol = new Commands();
  const transport = connect(protocol, new StringTransport());
  protocol.dataReceived(new Uint8Array(16385).fill(0x61));
  protocol.dataReceived(new TextEncoder().encode('\r\n'));
  assert.equal(transport.value().length, 0);
  assert.ok(transport.disconnecting);
});
