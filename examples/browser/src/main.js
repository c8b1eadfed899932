// A <textarea> bound to a Y.Text, synced through a y-websocket server such as
// ysyncd. The page's query string picks the server and room:
//   index.html?server=ws://127.0.0.1:1234&room=demo
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const params = new URLSearchParams(window.location.search)
const serverUrl = params.get('server') || 'ws://127.0.0.1:1234'
const room = params.get('room') || 'demo'

const doc = new Y.Doc()
const ytext = doc.getText('text')
// y-websocket appends the room to the URL as is; encode it so names with
// spaces, '/', '?' or '#' reach the server intact (it percent-decodes).
const provider = new WebsocketProvider(serverUrl, encodeURIComponent(room), doc, {
  // Tabs of one browser would otherwise also sync directly with each other,
  // which hides whether the server is doing its job.
  disableBc: true
})

const textarea = document.getElementById('editor')
const statusEl = document.getElementById('status')
const syncEl = document.getElementById('sync')
document.getElementById('where').textContent = `${room} @ ${serverUrl}`

// Marks our own transactions so the observer below can skip them: the
// textarea already shows what the user typed.
const LOCAL = Symbol('textarea')

const isHighSurrogate = (code) => code >= 0xd800 && code <= 0xdbff

// Replace only the changed middle of the text, so concurrent edits elsewhere
// in the document survive. Y.Text counts UTF-16 code units like JS strings;
// never cut a surrogate pair in half, which would corrupt the character.
function applyDiff (oldText, newText) {
  const maxPrefix = Math.min(oldText.length, newText.length)
  let start = 0
  while (start < maxPrefix && oldText.charCodeAt(start) === newText.charCodeAt(start)) {
    start++
  }
  if (start > 0 && isHighSurrogate(oldText.charCodeAt(start - 1))) start--
  let oldEnd = oldText.length
  let newEnd = newText.length
  while (
    oldEnd > start && newEnd > start &&
    oldText.charCodeAt(oldEnd - 1) === newText.charCodeAt(newEnd - 1)
  ) {
    oldEnd--
    newEnd--
  }
  if (oldEnd < oldText.length && isHighSurrogate(oldText.charCodeAt(oldEnd - 1))) {
    oldEnd++
    newEnd++
  }
  if (oldEnd === start && newEnd === start) return
  doc.transact(() => {
    if (oldEnd > start) ytext.delete(start, oldEnd - start)
    if (newEnd > start) ytext.insert(start, newText.slice(start, newEnd))
  }, LOCAL)
}

textarea.addEventListener('input', () => {
  applyDiff(ytext.toString(), textarea.value)
})

// Where a caret offset in the old text ends up after a remote change, given
// the change as a Yjs delta (retain / insert / delete runs over the old text).
// Text inserted exactly at the caret goes after it, so a remote writer does
// not push the local caret along.
function mapOffset (offset, delta) {
  let oldIndex = 0
  let shift = 0
  for (const op of delta) {
    if (oldIndex >= offset) break
    if (op.retain !== undefined) {
      oldIndex += op.retain
    } else if (op.insert !== undefined) {
      shift += op.insert.length
    } else if (op.delete !== undefined) {
      shift -= Math.min(op.delete, offset - oldIndex)
      oldIndex += op.delete
    }
  }
  return offset + shift
}

ytext.observe((event) => {
  if (event.transaction.origin === LOCAL) return
  const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
  const delta = event.delta
  textarea.value = ytext.toString()
  textarea.setSelectionRange(
    mapOffset(selectionStart, delta),
    mapOffset(selectionEnd, delta),
    selectionDirection
  )
  textarea.scrollTop = scrollTop
})

provider.on('status', ({ status }) => {
  statusEl.textContent = status
  statusEl.dataset.state = status
})
provider.on('sync', (synced) => {
  syncEl.textContent = synced ? 'synced' : 'not synced'
  syncEl.dataset.state = synced ? 'synced' : 'pending'
  // Wait for the server's copy before allowing edits, so nobody types into
  // what looks like an empty document. After that, edits made while offline
  // are kept and merged on reconnect.
  if (synced) textarea.readOnly = false
})
provider.on('closed', ({ code, reason }) => {
  statusEl.textContent = `closed by server (${code}${reason ? `: ${reason}` : ''})`
  statusEl.dataset.state = 'disconnected'
})

// Handy from the devtools console.
window.ysyncdDemo = { doc, ytext, provider }
