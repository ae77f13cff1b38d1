// An AutobahnJS (npm "autobahn", tests/node) WAMP client driven by the tests.
//
//   node tests/wamp/client.js URL REALM SERIALIZER      (SERIALIZER: json | msgpack | cbor)
//
// Prints one JSON object per line on stdout:
//   {"type":"joined","session":…,"protocol":"wamp.2.json"}
//   {"type":"event","topic":…,"subscription":…,"args":[…],"kwargs":{…}}
//   {"type":"reply","id":…,"ok":true,"result":…}   or   {"type":"reply","id":…,"ok":false,"error":"wamp.error…","args":[…],"kwargs":{…}}
//   {"type":"left","reason":…,"message":…}          {"type":"closed","reason":…,"details":{…}}
// and reads one JSON command per line on stdin:
//   {"id":1,"op":"subscribe","topic":"explorer.block","options":{"match":"prefix"}}
//   {"id":2,"op":"unsubscribe","topic":"explorer.block"}
//   {"id":3,"op":"call","procedure":"explorer.head","args":[]}
//   {"id":4,"op":"publish","topic":"explorer.block","args":[…],"options":{"acknowledge":true}}
//   {"id":5,"op":"register","procedure":"explorer.head"}
//   {"id":6,"op":"close"}
// It exits when the connection is closed (no reconnection) or stdin ends.
'use strict';

const path = require('path');
const readline = require('readline');
const NODE_MODULES = path.join(__dirname, '..', 'node', 'node_modules');

// AutobahnJS 26 uses the WebSocket global (Node >= 22); on older Node use "ws".
if (typeof globalThis.WebSocket === 'undefined') {
    globalThis.WebSocket = require(path.join(NODE_MODULES, 'ws'));
}
const autobahn = require(path.join(NODE_MODULES, 'autobahn'));

const [url, realm, serializerName] = process.argv.slice(2);
const serializers = {
    json: () => new autobahn.serializer.JSONSerializer(),
    msgpack: () => new autobahn.serializer.MsgpackSerializer(),
    cbor: () => new autobahn.serializer.CBORSerializer(),
};
if (!serializers[serializerName]) {
    console.error(`unknown serializer ${serializerName}`);
    process.exit(2);
}

function out(obj) {
    // BigInt never occurs in our data; Buffers would show as objects.
    process.stdout.write(JSON.stringify(obj) + '\n');
}

const connection = new autobahn.Connection({
    transports: [{type: 'websocket', url: url, serializers: [serializers[serializerName]()]}],
    realm: realm,
    max_retries: 0,
    retry_if_unreachable: false,
});

let session = null;
const subscriptions = {};

connection.onopen = (s, details) => {
    session = s;
    out({type: 'joined', session: s.id, protocol: connection.transport ? connection.transport.info.protocol : null,
         details: {realm: details.realm, authrole: details.authrole, authmethod: details.authmethod,
                   roles: Object.keys(details.roles || {})}});
};

connection.onclose = (reason, details) => {
    out({type: 'closed', reason: reason, details: details});
    process.exit(0);
};

function replyError(id, e) {
    if (e && e.error) {
        out({type: 'reply', id: id, ok: false, error: e.error, args: e.args || [], kwargs: e.kwargs || {}});
    } else {
        out({type: 'reply', id: id, ok: false, error: String(e)});
    }
}

async function run(cmd) {
    const id = cmd.id;
    try {
        if (cmd.op === 'close') {
            connection.close();
            out({type: 'reply', id: id, ok: true, result: null});
            return;
        }
        if (!session) throw new Error('no session');
        if (cmd.op === 'subscribe') {
            const topic = cmd.topic;
            const sub = await session.subscribe(topic, (args, kwargs, details) => {
                out({type: 'event', topic: details.topic || topic, subscription: sub.id,
                     args: args, kwargs: kwargs});
            }, cmd.options || {});
            subscriptions[topic] = sub;
            out({type: 'reply', id: id, ok: true, result: sub.id});
        } else if (cmd.op === 'unsubscribe') {
            await session.unsubscribe(subscriptions[cmd.topic]);
            out({type: 'reply', id: id, ok: true, result: null});
        } else if (cmd.op === 'call') {
            const result = await session.call(cmd.procedure, cmd.args || [], cmd.kwargs || {}, cmd.options || {});
            out({type: 'reply', id: id, ok: true, result: result === undefined ? null : result});
        } else if (cmd.op === 'publish') {
            const result = await session.publish(cmd.topic, cmd.args || [], cmd.kwargs || {}, cmd.options || {});
            out({type: 'reply', id: id, ok: true, result: result && result.id !== undefined ? result.id : null});
        } else if (cmd.op === 'register') {
            const reg = await session.register(cmd.procedure, () => null);
            out({type: 'reply', id: id, ok: true, result: reg.id});
        } else {
            throw new Error(`unknown op ${cmd.op}`);
        }
    } catch (e) {
        replyError(id, e);
    }
}

readline.createInterface({input: process.stdin}).on('line', (line) => {
    if (line.trim()) run(JSON.parse(line));
}).on('close', () => process.exit(0));

connection.open();
