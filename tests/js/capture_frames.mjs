#!/usr/bin/env node
// Captures golden wire frames for ysyncd's protocol codec tests and writes them to
// tests/vectors.py (or the path given as the first argument).
//
//   npm ci --prefix tests/js && node tests/js/capture_frames.mjs
//
// A tiny raw `ws` server on 127.0.0.1 accepts the stock y-websocket
// WebsocketProvider and records the exact binary frames it sends; the replies it
// sends back are built with the y-protocols encoders and recorded too. Client ids
// are pinned and nothing depends on time, so two runs write identical files.
// Each frame is also decoded here (with lib0 directly, independent of ysyncd) so
// that the Python test can check its decoder message by message.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as syncProtocol from 'y-protocols/sync'
import * as authProtocol from 'y-protocols/auth'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket, { WebSocketServer } from 'ws'
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import path from 'node:path'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const OUT = process.argv[2] ?? path.join(HERE, '..', 'vectors.py')
const CLIENT_ID = 1234
const SERVER_ID = 5678
const STEP_TIMEOUT_MS = 5000

// Whole run is bounded, whatever happens.
setTimeout(() => { console.error('capture_frames: timed out'); process.exit(1) }, 30000).unref()

const fail = (msg) => { throw new Error(msg) }
const frameOf = (...writers) => {
  const e = encoding.createEncoder()
  for (const w of writers) w(e)
  return encoding.toUint8Array(e)
}
const syncMsg = (write) => (e) => { encoding.writeVarUint(e, 0); write(e) }
const awarenessMsg = (aw, clients) => (e) => {
  encoding.writeVarUint(e, 1)
  encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(aw, clients))
}

// ---- raw server ---------------------------------------------------------------------
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
await new Promise((resolve, reject) => { wss.once('listening', resolve); wss.once('error', reject) })
const port = wss.address().port

// Queues filled by the server, drained by `next*()` with a per-step deadline.
const conns = []
const frames = []
let notify = () => {}
wss.on('connection', (ws) => {
  conns.push(ws)
  ws.on('message', (data, isBinary) => {
    if (!isBinary) fail('client sent a text frame')
    frames.push(new Uint8Array(data))
    notify()
  })
  notify()
})
const until = async (pred, what) => {
  const deadline = Date.now() + STEP_TIMEOUT_MS
  while (!pred()) {
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`)
    await new Promise((resolve) => { notify = resolve; setTimeout(resolve, 50) })
  }
}
const nextConn = async () => { await until(() => conns.length > 0, 'a connection'); return conns.shift() }
const nextFrame = async (what) => { await until(() => frames.length > 0, what); return frames.shift() }
const noMoreFrames = async () => {
  await new Promise((resolve) => setTimeout(resolve, 100))
  if (frames.length > 0) fail(`unexpected extra client frame(s): ${frames.length}`)
}

// ---- recording ------------------------------------------------------------------------
const vectors = []
const record = (name, origin, frame, description) => {
  if (vectors.some((v) => v.name === name)) fail(`duplicate vector ${name}`)
  vectors.push({ name, origin, frame: Uint8Array.from(frame), description, messages: decodeFrame(frame) })
}

const sortKeys = (v) => Array.isArray(v)
  ? v.map(sortKeys)
  : v !== null && typeof v === 'object'
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]))
    : v

// Content of an update applied to an empty doc, or null when the update is not
// standalone (it refers to structs it does not contain).
const contentOf = (update) => {
  const d = new Y.Doc()
  Y.applyUpdate(d, update)
  const standalone = d.store.pendingStructs === null && d.store.pendingDs === null
  const c = { text: d.getText('text').toString(), map: d.getMap('map').toJSON(), array: d.getArray('array').toJSON() }
  d.destroy()
  return standalone ? JSON.stringify(sortKeys(c)) : null
}

const decodeFrame = (frame) => {
  const dec = decoding.createDecoder(frame)
  const out = []
  while (decoding.hasContent(dec)) {
    const type = decoding.readVarUint(dec)
    const m = { type, subtype: null, payload: new Uint8Array(0), stateVector: null, awareness: null, reason: null, content: null }
    if (type === 0) {
      m.subtype = decoding.readVarUint(dec)
      m.payload = decoding.readVarUint8Array(dec)
      if (m.subtype === 0) {
        const d = decoding.createDecoder(m.payload)
        m.stateVector = []
        for (let n = decoding.readVarUint(d); n > 0; n--) m.stateVector.push([decoding.readVarUint(d), decoding.readVarUint(d)])
        if (decoding.hasContent(d)) fail('trailing bytes in state vector')
      } else if (m.subtype === 1 || m.subtype === 2) {
        m.content = contentOf(m.payload)
      } else fail(`unknown sync type ${m.subtype}`)
    } else if (type === 1) {
      m.payload = decoding.readVarUint8Array(dec)
      const d = decoding.createDecoder(m.payload)
      m.awareness = []
      for (let n = decoding.readVarUint(d); n > 0; n--) {
        m.awareness.push({ clientId: decoding.readVarUint(d), clock: decoding.readVarUint(d), stateJson: decoding.readVarString(d) })
      }
      if (decoding.hasContent(d)) fail('trailing bytes in awareness update')
    } else if (type === 2) {
      m.subtype = decoding.readVarUint(dec)
      if (m.subtype !== 0) fail(`unknown auth type ${m.subtype}`)
      m.payload = decoding.readVarUint8Array(dec) // varString = varUint8Array of UTF-8
      m.reason = new TextDecoder('utf-8', { fatal: true }).decode(m.payload)
    } else if (type !== 3) fail(`unknown message type ${type}`)
    out.push(m)
  }
  return out
}

// ---- the session -----------------------------------------------------------------------
const doc = new Y.Doc()
doc.clientID = CLIENT_ID
const text = doc.getText('text')
const provider = new WebsocketProvider(`ws://127.0.0.1:${port}`, 'vectors', doc, {
  WebSocketPolyfill: WebSocket, disableBc: true, connect: false
})
provider.awareness.setLocalState({ user: { name: 'Zoë 日本' } })

// What the "server" knows, to build realistic replies.
const sdoc = new Y.Doc()
sdoc.clientID = SERVER_ID
const saw = new awarenessProtocol.Awareness(sdoc)
sdoc.getMap('map').set('server', 'Zoë')
sdoc.getArray('array').insert(0, [1, 'é', { k: null }])

const observations = {}
const warnings = []
console.warn = (...args) => { warnings.push(args.join(' ')) }

provider.connect()
let conn = await nextConn()
const send = (frame) => new Promise((resolve, reject) => conn.send(frame, (err) => err ? reject(err) : resolve()))

record('client_sync_step1_empty', 'client', await nextFrame('step 1'),
  'Stock client, on connect with an empty doc: sync step 1 with an empty state vector.')
record('client_awareness_connect', 'client', await nextFrame('awareness'),
  'Stock client, right after its step 1: its own awareness state (clock 1) with a ' +
  'non-ASCII user name.')

text.insert(0, 'héllo 日本 🎉')
record('client_update_text_insert', 'client', await nextFrame('update'),
  'Stock client: sync update for a Y.Text insert of non-ASCII text into an empty doc.')

const step1 = frameOf(syncMsg((e) => syncProtocol.writeSyncStep1(e, sdoc)))
record('server_sync_step1', 'encoder', step1,
  'y-protocols writeSyncStep1 for a doc holding one client\'s structs.')
await send(step1)
record('client_sync_step2_reply', 'client', await nextFrame('step 2 reply'),
  'Stock client: sync step 2 sent in reply to server_sync_step1 (everything the ' +
  'server lacks: the whole client doc).')

const step2 = frameOf(syncMsg((e) => syncProtocol.writeSyncStep2(e, sdoc)))
record('server_sync_step2', 'encoder', step2,
  'y-protocols writeSyncStep2 of the whole server doc (Y.Map and Y.Array content); ' +
  'the stock client becomes synced on it.')
await send(step2)
await until(() => provider.synced, 'synced')

text.delete(1, 2)
record('client_update_text_delete', 'client', await nextFrame('delete update'),
  'Stock client: sync update of a Y.Text deletion: no structs, only a delete set ' +
  '(not standalone, so no content).')
doc.getMap('map').set('naïve', { 日本: [1, 2.5, true, null] })
record('client_update_map_set', 'client', await nextFrame('map update'),
  'Stock client: sync update of a Y.Map set with a non-ASCII key and a JSON value.')
text.insert(text.length, 'Zoë日本🎉-'.repeat(20))
record('client_update_text_long', 'client', await nextFrame('long update'),
  'Stock client: sync update whose payload is longer than 127 bytes, so its ' +
  'varUint length takes two bytes.')

let supdate = null
sdoc.once('update', (u) => { supdate = u })
sdoc.getMap('map').set('fresh', '日本')
const update = frameOf(syncMsg((e) => syncProtocol.writeUpdate(e, supdate)))
record('server_update', 'encoder', update,
  'y-protocols writeUpdate of one Y.Map set by the server doc; its clock starts at ' +
  '4, so it applies only on top of server_sync_step2 (no standalone content).')
await send(update)

saw.setLocalState({ user: { name: 'Server ☃', color: '#30bced' } })
const aw = frameOf(awarenessMsg(saw, [SERVER_ID]))
record('server_awareness', 'encoder', aw,
  'y-protocols encodeAwarenessUpdate for one client (clock 1).')
await send(aw)
record('client_awareness_relay', 'client', await nextFrame('awareness relay'),
  'Stock client, after receiving server_awareness: it sends that state straight ' +
  'back (WebsocketProvider broadcasts every awareness change, remote ones too).')

const query = frameOf((e) => encoding.writeVarUint(e, 3))
record('server_query_awareness', 'encoder', query, 'Query awareness: the message type alone.')
await send(query)
record('client_awareness_query_reply', 'client', await nextFrame('query reply'),
  'Stock client: reply to server_query_awareness: every awareness state it knows ' +
  '(its own and the server\'s).')

saw.setLocalState(null)
const awGone = frameOf(awarenessMsg(saw, [SERVER_ID]))
record('server_awareness_removed', 'encoder', awGone,
  'y-protocols encodeAwarenessUpdate after setLocalState(null): state JSON "null", clock 2.')
await send(awGone)
record('client_awareness_relay_removed', 'client', await nextFrame('removal relay'),
  'Stock client, after server_awareness_removed: relays the removal back (state ' +
  'JSON "null", clock 2).')

const denied = frameOf((e) => { encoding.writeVarUint(e, 2); authProtocol.writePermissionDenied(e, 'Zoë: no access 🚫') })
record('server_auth_permission_denied', 'encoder', denied,
  'Auth message: permission denied with a non-ASCII reason (varString).')
await send(denied)

// Two messages in one frame. y-websocket's readMessage() decodes only the first
// message of a frame; observe that instead of assuming it.
saw.setLocalState({ user: { name: 'again' } })
let concatUpdate = null
sdoc.once('update', (u) => { concatUpdate = u })
sdoc.getMap('map').set('concat', 1)
const concat = frameOf(syncMsg((e) => syncProtocol.writeUpdate(e, concatUpdate)), awarenessMsg(saw, [SERVER_ID]))
await send(concat)
await send(query) // its reply proves the concatenated frame was processed
await nextFrame('second query reply')
observations.concatFirstApplied = doc.getMap('map').get('concat') === 1
observations.concatSecondApplied = provider.awareness.getStates().has(SERVER_ID)
observations.permissionDeniedReason = warnings.some((w) => w.includes('Zoë: no access 🚫'))
if (!observations.concatFirstApplied) fail('stock client ignored the first message of a frame')
if (!observations.permissionDeniedReason) fail('stock client did not report the auth reason')
record('server_concat_update_awareness', 'encoder', concat,
  'Two messages in one frame: a sync update then an awareness update. ' +
  (observations.concatSecondApplied
    ? 'The stock y-websocket client applies both.'
    : 'NOTE: the stock y-websocket 3.1.0 client decodes only the first message of ' +
      'a frame and silently drops the rest, so a server must send one message per ' +
      'frame; a server must still accept concatenated frames from other clients.'))

provider.disconnect()
record('client_awareness_disconnect', 'client', await nextFrame('awareness on disconnect'),
  'Stock client, on provider.disconnect(): its awareness entry with state null and ' +
  'the UNCHANGED clock 1 (receivers accept null at an equal clock).')

provider.connect()
conn = await nextConn()
record('client_sync_step1_after_edits', 'client', await nextFrame('step 1 again'),
  'Stock client, on reconnect: sync step 1 with a two-client state vector (encoded ' +
  'in descending client id order).')
const again = await nextFrame('awareness again')
if (Buffer.compare(again, vectors.find((v) => v.name === 'client_awareness_connect').frame) !== 0) {
  fail('awareness on reconnect differs from the first one')
}
const svReply = frameOf(syncMsg((e) => syncProtocol.writeSyncStep2(e, sdoc, Y.encodeStateVector(doc))))
record('server_sync_step2_empty', 'encoder', svReply,
  'y-protocols writeSyncStep2 when the client already has everything: an empty ' +
  'update (no structs, empty delete set).')
await send(svReply)
await noMoreFrames()

provider.destroy()
for (const c of wss.clients) c.terminate()
await new Promise((resolve) => wss.close(resolve))

const two = frameOf(syncMsg((e) => syncProtocol.writeSyncStep1(e, sdoc)), syncMsg((e) => syncProtocol.writeSyncStep2(e, sdoc)))
record('server_concat_step1_step2', 'encoder', two,
  'Two sync messages in one frame: step 1 then step 2 (what a server would send ' +
  'on connect if it batched them).')

// ---- Python output ----------------------------------------------------------------------
const version = (pkg) => JSON.parse(readFileSync(path.join(HERE, 'node_modules', pkg, 'package.json'), 'utf8')).version
const LIMIT = 88

// Python string literals, ASCII only (so width == length for line wrapping), quoted
// the way ruff format does: double quotes unless the text holds more of those than
// single quotes. Escaping is per character, so a string can be cut between tokens.
const pyTokens = (s) => [...s].map((ch) => {
  const cp = ch.codePointAt(0)
  if (ch === '\\') return '\\\\'
  if (ch === '\n') return '\\n'
  if (cp >= 0x20 && cp < 0x7f) return ch // quotes are escaped when rendered
  if (cp < 0x100) return '\\x' + cp.toString(16).padStart(2, '0')
  if (cp < 0x10000) return '\\u' + cp.toString(16).padStart(4, '0')
  return '\\U' + cp.toString(16).padStart(8, '0')
})
const pyLit = (toks) => {
  const dq = toks.filter((t) => t === '"').length
  const sq = toks.filter((t) => t === "'").length
  const q = dq > sq ? "'" : '"'
  return q + toks.map((t) => (t === q ? '\\' + t : t)).join('') + q
}
const hex = (bytes) => Buffer.from(bytes).toString('hex')

// A tiny layout engine with ruff-format's rules for what we emit: a node goes on one
// line if it fits, else its children go one per line with a trailing comma; long
// strings become parenthesized implicit concatenations.
const Str = (s) => ({ k: 'str', toks: pyTokens(s) })
const Call = (fn, args) => ({ k: 'call', fn, args }) // args: [[name|null, node]]
const Tup = (items) => ({ k: 'tup', items })
const Lit = (s) => ({ k: 'lit', s })

const flat = (n) => {
  switch (n.k) {
    case 'lit': return n.s
    case 'str': return pyLit(n.toks)
    case 'call': return `${n.fn}(${n.args.map(([k, v]) => (k ? k + '=' : '') + flat(v)).join(', ')})`
    case 'tup': return n.items.length === 1 ? `(${flat(n.items[0])},)` : `(${n.items.map(flat).join(', ')})`
  }
}
const chunks = (toks, width) => {
  if (pyLit(toks).length <= width + 2) return [pyLit(toks)]
  // Quotes may need a backslash in whichever quoting ruff picks for the piece, so
  // count them as two. Prefer to cut after a space, as a person would.
  const w = (t) => (t === '"' || t === "'" ? 2 : t.length)
  const out = []
  let i = 0
  while (i < toks.length) {
    let j = i
    let len = 0
    while (j < toks.length && len + w(toks[j]) <= width) len += w(toks[j++])
    if (j === i) j = i + 1
    if (j < toks.length) {
      const space = toks.lastIndexOf(' ', j - 1)
      if (space >= i && space + 1 < j) j = space + 1
    }
    out.push(pyLit(toks.slice(i, j)))
    i = j
  }
  return out
}
const layout = (n, indent, prefix, suffix) => {
  const pad = ' '.repeat(indent)
  const one = pad + prefix + flat(n) + suffix
  if (one.length <= LIMIT) return [one]
  const inner = ' '.repeat(indent + 4)
  if (n.k === 'str') {
    return [pad + prefix + '(', ...chunks(n.toks, LIMIT - indent - 6).map((c) => inner + c), pad + ')' + suffix]
  }
  if (n.k === 'call' && n.args.length === 1 && n.args[0][0] === null && n.args[0][1].k === 'str') {
    // bytes.fromhex("...") hugging its only argument
    return [pad + prefix + n.fn + '(', ...chunks(n.args[0][1].toks, LIMIT - indent - 6).map((c) => inner + c), pad + ')' + suffix]
  }
  const open = n.k === 'call' ? n.fn + '(' : '('
  const kids = n.k === 'call' ? n.args : n.items.map((v) => [null, v])
  return [
    pad + prefix + open,
    ...kids.flatMap(([k, v]) => layout(v, indent + 4, k ? k + '=' : '', ',')),
    pad + ')' + suffix
  ]
}
const bytesNode = (b) => Call('bytes.fromhex', [[null, Str(hex(b))]])
const none = Lit('None')
const messageNode = (m) => Call('Message', [
  ['type', Lit(String(m.type))],
  ['subtype', m.subtype === null ? none : Lit(String(m.subtype))],
  ['payload', bytesNode(m.payload)],
  ...(m.stateVector ? [['state_vector', Tup(m.stateVector.map(([c, k]) => Tup([Lit(String(c)), Lit(String(k))])))]] : []),
  ...(m.awareness
    ? [['awareness', Tup(m.awareness.map((a) => Call('AwarenessEntry', [
        ['client_id', Lit(String(a.clientId))], ['clock', Lit(String(a.clock))], ['state_json', Str(a.stateJson)]
      ])))]]
    : []),
  ...(m.reason !== null ? [['reason', Str(m.reason)]] : []),
  ...(m.content !== null ? [['content_json', Str(m.content)]] : [])
])
const vectorNode = (v) => Call('Vector', [
  ['name', Str(v.name)],
  ['origin', Str(v.origin)],
  ['description', Str(v.description)],
  ['frame', bytesNode(v.frame)],
  ['messages', Tup(v.messages.map(messageNode))]
])

const py = `# Generated by tests/js/capture_frames.mjs -- DO NOT EDIT.
# Regenerate with:  npm ci --prefix tests/js && node tests/js/capture_frames.mjs
# (the output is deterministic: running it again rewrites this file unchanged).
# Captured with yjs ${version('yjs')}, y-websocket ${version('y-websocket')}, y-protocols ${version('y-protocols')}, lib0 ${version('lib0')}.
"""Golden y-websocket protocol frames for the codec tests.

origin "client": bytes the stock y-websocket WebsocketProvider sent (Y client id
${CLIENT_ID}). origin "encoder": bytes built with the y-protocols encoders (server
doc client id ${SERVER_ID}), which the stock client was fed where that makes sense.

Each :class:\`Message\` gives the varUint message type (0 sync, 1 awareness, 2 auth,
3 query awareness), the subtype (sync: 0 step 1, 1 step 2, 2 update; auth: 0
permission denied; else None), the payload bytes (the varUint8Array body for sync
and awareness, the UTF-8 reason for auth, empty for query awareness) and decoded
details where they apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state_json: str  # exact JSON text on the wire; "null" means removed


@dataclass(frozen=True)
class Message:
    type: int
    subtype: int | None
    payload: bytes
    # sync step 1: the state vector's (client, clock) pairs in encoded order
    state_vector: tuple[tuple[int, int], ...] | None = None
    awareness: tuple[AwarenessEntry, ...] | None = None
    reason: str | None = None  # auth permission denied
    # sync step 2 / update: {"text","map","array"} JSON after applying the payload to
    # an empty doc; None when the update is not standalone
    content_json: str | None = None

    def content(self) -> dict[str, Any] | None:
        if self.content_json is None:
            return None
        value: dict[str, Any] = json.loads(self.content_json)
        return value


@dataclass(frozen=True)
class Vector:
    name: str
    origin: str  # "client" or "encoder"
    description: str
    frame: bytes
    messages: tuple[Message, ...]


STOCK_CLIENT_DECODES_CONCATENATED_FRAMES = ${observations.concatSecondApplied ? 'True' : 'False'}

VECTORS: list[Vector] = [
${vectors.map((v) => layout(vectorNode(v), 4, '', ',').join('\n')).join('\n')}
]

BY_NAME: dict[str, Vector] = {v.name: v for v in VECTORS}
`
writeFileSync(OUT, py)
console.error(`capture_frames: wrote ${vectors.length} vectors to ${OUT}`)
process.exit(0)
