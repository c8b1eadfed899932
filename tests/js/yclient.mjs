#!/usr/bin/env node
// Long-lived test driver around ONE stock y-websocket WebsocketProvider.
//
//   node tests/js/yclient.mjs <serverUrl> <room> [--client-id N] [--param k=v]...
//                             [--max-backoff-ms N]
//
// stdin: one JSON command per line, e.g. {"id":1,"cmd":"edit","n":10,"seed":3}.
// stdout: one JSON object per line: replies carry the command's "id" (plus "ok":true
// or "error":"..."), unsolicited events carry "event" instead. Diagnostics go to
// stderr only, so stdout stays machine-readable. Every wait has a timeout, scaled
// by env YSYNCD_TESTS_TIMEOUT_FACTOR. Commands run concurrently; a test that needs
// ordering awaits each reply before sending the next command.

import * as Y from 'yjs'
import { WebsocketProvider, messageSync, messageAuth } from 'y-websocket'
import * as syncProtocol from 'y-protocols/sync'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import readline from 'node:readline'
import { isDeepStrictEqual } from 'node:util'

const FACTOR = Number(process.env.YSYNCD_TESTS_TIMEOUT_FACTOR || '1') || 1
const DEFAULT_TIMEOUT_MS = 10000

const usage = () => {
  process.stderr.write('usage: yclient.mjs <serverUrl> <room> [--client-id N] ' +
    '[--param k=v]... [--max-backoff-ms N]\n')
  process.exit(2)
}

// ---- arguments ------------------------------------------------------------------
const argv = process.argv.slice(2)
const positional = []
let clientId = null
let maxBackoffTime = 2500
const params = {}
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  if (a === '--client-id') clientId = Number(argv[++i])
  else if (a === '--max-backoff-ms') maxBackoffTime = Number(argv[++i])
  else if (a === '--param') {
    const kv = argv[++i] ?? ''
    const eq = kv.indexOf('=')
    if (eq < 1) usage()
    params[kv.slice(0, eq)] = kv.slice(eq + 1)
  } else if (a.startsWith('--')) usage()
  else positional.push(a)
}
if (positional.length !== 2) usage()
if (clientId !== null && !(Number.isInteger(clientId) && clientId >= 0)) usage()
if (!(Number.isFinite(maxBackoffTime) && maxBackoffTime >= 0)) usage()
const [serverUrl, room] = positional

const emit = (obj) => { process.stdout.write(JSON.stringify(obj) + '\n') }

// ---- document + provider ------------------------------------------------------------
const doc = new Y.Doc()
// Must be set before the provider exists: its Awareness copies doc.clientID.
if (clientId !== null) doc.clientID = clientId
const text = doc.getText('text')
const ymap = doc.getMap('map')
const yarray = doc.getArray('array')

const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket,
  disableBc: true, // one process = one client; no cross-tab channel
  params,
  maxBackoffTime,
  connect: false // connect() at the end, once every listener is attached
})

// "Confirmed" tracking. y-websocket 3.1.0 keeps no record of unconfirmed updates: it
// only has `synced` (= a sync step 2 arrived) and sends local updates
// fire-and-forget. So we watch through its public per-instance `messageHandlers`
// table: every sync step 2 / update payload the server sends is also applied to
// `serverView`, a doc holding exactly what the server has sent us. A local update
// is confirmed once `serverView` contains it (all its structs and deletions, per
// Y.snapshotContainsUpdate), i.e. the server echoed it back to us.
const serverView = new Y.Doc()
let unconfirmed = [] // local updates (Uint8Array) not yet seen coming back
doc.on('update', (update, origin) => {
  // Same test the provider uses to decide what to send to the server.
  if (origin !== provider) unconfirmed.push(update)
})
const checkConfirmed = () => {
  if (unconfirmed.length > 0) {
    const snap = Y.snapshot(serverView)
    unconfirmed = unconfirmed.filter((u) => !Y.snapshotContainsUpdate(snap, u))
  }
  return unconfirmed.length === 0
}

const origSync = provider.messageHandlers[messageSync]
provider.messageHandlers[messageSync] = (encoder, decoder, prov, emitSynced, type) => {
  const peek = decoding.clone(decoder)
  const syncType = decoding.readVarUint(peek)
  if (syncType === syncProtocol.messageYjsSyncStep2 || syncType === syncProtocol.messageYjsUpdate) {
    try {
      Y.applyUpdate(serverView, decoding.readVarUint8Array(peek))
    } catch (err) {
      emit({ event: 'error', where: 'server-view', error: String(err) })
    }
  }
  origSync(encoder, decoder, prov, emitSynced, type)
  wake()
}
// The stock handler only console.warns; surface it so tests can assert on it.
const origAuth = provider.messageHandlers[messageAuth]
provider.messageHandlers[messageAuth] = (encoder, decoder, prov, emitSynced, type) => {
  const peek = decoding.clone(decoder)
  if (decoding.readVarUint(peek) === 0) {
    emit({ event: 'permission-denied', reason: decoding.readVarString(peek) })
  }
  origAuth(encoder, decoder, prov, emitSynced, type)
}

provider.on('status', ({ status }) => { emit({ event: 'status', status }); wake() })
provider.on('sync', (synced) => { emit({ event: 'sync', synced }); wake() })
provider.on('connection-close', (ev) => {
  // ev is null when we closed the socket ourselves (disconnect / watchdog).
  emit(ev == null
    ? { event: 'connection-close', code: null, reason: null, local: true }
    : { event: 'connection-close', code: ev.code, reason: String(ev.reason ?? ''), local: false })
  wake()
})
provider.on('connection-error', (ev) => {
  emit({ event: 'connection-error', error: String(ev?.message ?? ev?.error ?? ev?.type ?? ev) })
})
// Emitted when the server closed with a 4400-4499 code: the provider gives up.
provider.on('closed', ({ code, reason }) => { emit({ event: 'closed', code, reason }); wake() })
doc.on('update', () => wake())
provider.awareness.on('change', () => wake())

// ---- waiting ----------------------------------------------------------------------
// Waiters re-check their predicate whenever something may have changed, plus a
// slow poll as a safety net; each one has a deadline.
const waiters = new Set()
let wakeScheduled = false
// Coalesced: a burst of thousands of incoming updates costs a few checks, not one
// (O(document) each) per update.
function wake () {
  if (wakeScheduled || waiters.size === 0) return
  wakeScheduled = true
  setTimeout(() => {
    wakeScheduled = false
    for (const w of [...waiters]) w.check()
  }, 10)
}
const waitFor = (predicate, timeoutMs, describe) => new Promise((resolve, reject) => {
  const ms = (timeoutMs ?? DEFAULT_TIMEOUT_MS) * FACTOR
  const w = {
    check: () => {
      let ok
      try { ok = predicate() } catch (err) { return finish(err) }
      if (ok) finish(null)
    }
  }
  const timer = setTimeout(() => finish(new Error(`timeout after ${ms} ms: ${describe()}`)), ms)
  const poll = setInterval(() => w.check(), 250)
  function finish (err) {
    if (!waiters.delete(w)) return
    clearTimeout(timer)
    clearInterval(poll)
    err ? reject(err) : resolve()
  }
  waiters.add(w)
  w.check()
})

const dump = () => ({ text: text.toString(), map: ymap.toJSON(), array: yarray.toJSON() })
const awarenessStates = () => Object.fromEntries(provider.awareness.getStates())

// ---- deterministic edits ------------------------------------------------------------
// mulberry32: tiny seeded PRNG, so a (seed, n, starting state) triple always yields
// the same operations.
const prng = (seed) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const SNIPPETS = ['a', 'bc', 'xyz ', 'é', 'Zoë', '日本', '語', '🎉', 'a🙂b', '\n', 'ß∂', ' ']
const KEYS = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'naïve', '鍵']

// Y.Text indexes count UTF-16 code units; never cut a surrogate pair in half, or
// the emoji would turn into lone surrogates.
const boundaries = (s) => {
  const out = [0]
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < s.length) i++
    out.push(i + 1)
  }
  return out
}

const randomEdits = (n, seed) => {
  const rnd = prng(seed)
  const int = (k) => Math.floor(rnd() * k) // 0..k-1
  const pick = (xs) => xs[int(xs.length)]
  const value = () => {
    switch (int(5)) {
      case 0: return int(1000) - 500
      case 1: return pick(SNIPPETS) + pick(SNIPPETS)
      case 2: return int(2) === 1
      case 3: return null
      default: return { s: pick(SNIPPETS), n: int(100), l: [int(10), pick(SNIPPETS)] }
    }
  }
  // Weighted so that content grows: inserts and sets outnumber deletes.
  const OPS = [0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 5]
  for (let i = 0; i < n; i++) {
    const op = pick(OPS)
    doc.transact(() => {
      if (op === 0 || (op === 1 && text.length === 0)) {
        const b = boundaries(text.toString())
        text.insert(pick(b), pick(SNIPPETS) + (int(3) === 0 ? pick(SNIPPETS) : ''))
      } else if (op === 1) {
        const b = boundaries(text.toString())
        const from = int(b.length - 1)
        const to = Math.min(b.length - 1, from + 1 + int(3))
        text.delete(b[from], b[to] - b[from])
      } else if (op === 2 || (op === 3 && ymap.size === 0)) {
        ymap.set(pick(KEYS), value())
      } else if (op === 3) {
        ymap.delete(pick([...ymap.keys()].sort()))
      } else if (op === 4 || yarray.length === 0) {
        const items = []
        for (let k = 1 + int(3); k > 0; k--) items.push(value())
        yarray.insert(int(yarray.length + 1), items)
      } else {
        const from = int(yarray.length)
        yarray.delete(from, Math.min(yarray.length - from, 1 + int(2)))
      }
    })
  }
}

// ---- commands -------------------------------------------------------------------------
const need = (cond, msg) => { if (!cond) throw new Error(msg) }

const commands = {
  wait_synced: async (c) => {
    await waitFor(() => provider.synced, c.timeout_ms, () => `synced=${provider.synced} ` +
      `wsconnected=${provider.wsconnected}`)
    return {}
  },
  wait_confirmed: async (c) => {
    await waitFor(checkConfirmed, c.timeout_ms,
      () => `${unconfirmed.length} local update(s) not echoed by the server`)
    return {}
  },
  edit: async (c) => {
    need(Number.isInteger(c.n) && c.n >= 0, 'edit: n must be a non-negative integer')
    need(Number.isInteger(c.seed), 'edit: seed must be an integer')
    randomEdits(c.n, c.seed)
    return {}
  },
  insert_text: async (c) => {
    need(typeof c.text === 'string', 'insert_text: text must be a string')
    const index = c.index ?? text.length
    need(Number.isInteger(index) && index >= 0 && index <= text.length, 'insert_text: bad index')
    text.insert(index, c.text)
    return {}
  },
  delete_text: async (c) => {
    need(Number.isInteger(c.index) && Number.isInteger(c.length), 'delete_text: index, length')
    text.delete(c.index, c.length)
    return {}
  },
  // Deletes every other character of the text, back to front, in one
  // transaction: one update whose delete set has length / 2 ranges.
  delete_every_other: async () => {
    doc.transact(() => {
      for (let i = text.length - 1; i >= 0; i -= 2) text.delete(i, 1)
    })
    return {}
  },
  set_map: async (c) => {
    need(typeof c.key === 'string', 'set_map: key must be a string')
    ymap.set(c.key, c.value === undefined ? null : c.value)
    return {}
  },
  delete_map: async (c) => {
    need(typeof c.key === 'string', 'delete_map: key must be a string')
    ymap.delete(c.key)
    return {}
  },
  push_array: async (c) => {
    need(Array.isArray(c.values), 'push_array: values must be a list')
    yarray.push(c.values)
    return {}
  },
  dump: async () => dump(),
  wait_content: async (c) => {
    need(c.expect && typeof c.expect === 'object', 'wait_content: expect must be an object')
    // Compare only the fields given, so a test may expect e.g. just {"text": ...}.
    const matches = () => Object.entries(c.expect).every(([k, v]) => isDeepStrictEqual(dump()[k], v))
    await waitFor(matches, c.timeout_ms, () => `content is ${JSON.stringify(dump())}`)
    return dump()
  },
  // Full document state as base64 Y.encodeStateAsUpdate, for cross-checks in Python.
  state: async () => ({ update: Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64') }),
  status: async () => ({
    connected: provider.wsconnected,
    connecting: provider.wsconnecting,
    synced: provider.synced,
    should_connect: provider.shouldConnect,
    unconfirmed: unconfirmed.length,
    client_id: doc.clientID
  }),
  wait_status: async (c) => {
    const want = c.status
    need(['connected', 'disconnected', 'connecting'].includes(want), 'wait_status: bad status')
    const now = () => provider.wsconnected ? 'connected'
      : provider.wsconnecting ? 'connecting' : 'disconnected'
    await waitFor(() => now() === want, c.timeout_ms, () => `status is ${now()}`)
    return {}
  },
  disconnect: async () => { provider.disconnect(); return {} },
  connect: async () => { provider.connect(); return {} },
  set_awareness: async (c) => {
    need(c.state === null || typeof c.state === 'object', 'set_awareness: state must be object|null')
    provider.awareness.setLocalState(c.state)
    return {}
  },
  awareness: async () => ({ client_id: doc.clientID, states: awarenessStates() }),
  // Waits until client_id's awareness state deep-equals `state` (null = absent).
  wait_awareness: async (c) => {
    need(Number.isInteger(c.client_id), 'wait_awareness: client_id must be an integer')
    const want = c.state ?? null
    const cur = () => provider.awareness.getStates().get(c.client_id) ?? null
    await waitFor(() => isDeepStrictEqual(cur(), want), c.timeout_ms,
      () => `awareness is ${JSON.stringify(awarenessStates())}`)
    return { client_id: doc.clientID, states: awarenessStates() }
  },
  quit: async () => { quit(0); return null }
}

let quitting = false
function quit (code) {
  if (quitting) return
  quitting = true
  try { provider.destroy() } catch (err) { process.stderr.write(`destroy: ${err}\n`) }
  // The reply (if any) is written first; exit once stdout has drained.
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 2000).unref()
}

const handle = async (line) => {
  if (line.trim() === '') return
  let c
  try {
    c = JSON.parse(line)
  } catch (err) {
    emit({ id: null, error: `bad JSON: ${err.message}` })
    return
  }
  const id = c?.id ?? null
  const fn = commands[c?.cmd]
  if (!fn) {
    emit({ id, error: `unknown command: ${JSON.stringify(c?.cmd)}` })
    return
  }
  try {
    if (c.cmd === 'quit') {
      emit({ id, ok: true })
      quit(0)
      return
    }
    emit({ id, ok: true, ...(await fn(c)) })
  } catch (err) {
    emit({ id, error: String(err?.message ?? err) })
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => { handle(line) })
// Parent went away (or closed stdin): do not linger as an orphan.
rl.on('close', () => quit(0))

emit({ event: 'started', client_id: doc.clientID, url: provider.url })
provider.connect()
