// async_chat from Node.js: the npm `thrift` package and code generated from chat.thrift.
//
//   mkdir -p examples/node/gen-nodejs && thrift --gen js:node -out examples/node/gen-nodejs chat.thrift
//   (Debian/Ubuntu: apt-get install thrift-compiler)
//   (cd examples/node && npm ci)
//   node examples/node/client.js --port 9090 [--transport framed] [--protocol compact] [--gen DIR]
//
// The calls every client needs: publish with a client_msg_id (so a retry is stored once), subscribe,
// poll in a loop (a long poll: the socket timeout must be longer than wait_ms), and resume from next_seq.
'use strict';

// A string as JSON, with the C1 controls and Unicode line separators JSON leaves alone escaped too.
const shown = (text) => JSON.stringify(text).replace(/[\u007f-\u009f\u2028\u2029]/g,
  (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

const path = require('path');
const { randomUUID } = require('crypto');
const { parseArgs } = require('util');
const thrift = require('thrift');

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '9090' },
    transport: { type: 'string', default: 'buffered' },
    protocol: { type: 'string', default: 'binary' },
    room: { type: 'string', default: 'node' },
    gen: { type: 'string', default: path.join(__dirname, 'gen-nodejs') },
  },
});
const ChatService = require(path.resolve(args.gen, 'ChatService'));
const types = require(path.resolve(args.gen, 'chat_types'));

const TRANSPORTS = { buffered: thrift.TBufferedTransport, framed: thrift.TFramedTransport };
const PROTOCOLS = { binary: thrift.TBinaryProtocol, compact: thrift.TCompactProtocol };
const WAIT_MS = 5000; // how long one poll may wait for a message

function connect() {
  const connection = thrift.createConnection(args.host, Number(args.port), {
    transport: TRANSPORTS[args.transport],
    protocol: PROTOCOLS[args.protocol],
    connect_timeout: 5000,
    timeout: WAIT_MS + 10000, // longer than any poll, or a quiet room looks like an error
  });
  connection.on('error', (err) => {
    console.error(`connection error: ${err.message}`);
    process.exitCode = 1;
  });
  return { connection, client: thrift.createClient(ChatService, connection) };
}

async function main() {
  const reader = connect();
  const writer = connect();
  try {
    // Subscribe first (from_seq 0: only what comes next), so nothing published after this is missed.
    const sub = await reader.client.subscribe(args.room, 0);
    const seq = await writer.client.publish(new types.Message({
      sender: 'node', content: 'hello from Node', room: args.room, client_msg_id: randomUUID(),
    }));
    console.log(`published seq=${Number(seq)}`);
    await writer.client.sendMessage(new types.Message({ sender: 'node', content: 'the classic call', room: args.room }));

    // from_seq says where this client is: after a lost reply, the same poll (from a new connection) gets
    // the same batch again. Keep batch.next_seq and pass it to the next poll.
    const batch = await reader.client.poll(sub.subscription_id, 100, WAIT_MS, sub.next_seq);
    if (Number(batch.missed) > 0 || batch.renumbered) console.log(`lost ${Number(batch.missed)} message(s)`); // never silent
    // Quoted and escaped: content may hold newlines and escape sequences, which must neither pass for
    // another line nor act on the terminal.
    for (const m of batch.messages) console.log(`received #${Number(m.seq)} ${m.sender}: ${shown(m.content)}`);
    // If the subscription is gone (NO_SUCH_SUBSCRIPTION): subscribe(room, batch.next_seq) replays from there.

    try {
      await writer.client.publish(new types.Message({ sender: '', content: 'who am I?', room: args.room }));
    } catch (err) {
      if (!(err instanceof types.ChatError)) throw err;
      const name = Object.keys(types.ErrorCode).find((k) => types.ErrorCode[k] === err.code);
      console.log(`refused ${name}: ${err.reason}`);
    }
    await reader.client.unsubscribe(sub.subscription_id);
  } finally {
    reader.connection.end();
    writer.connection.end();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
