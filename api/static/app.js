// The boxoffice page: concerts, a live seat map, sign-up and log-in, holds, orders and tickets with QR codes.
//
// A plain ES module with no dependencies and no build step. It talks to the same JSON API as every other client.
// The bearer token lives in sessionStorage and travels only in the Authorization header: it is never logged and
// never put in a URL (nor is a ticket token: QR codes are fetched with the header and shown through blob: URLs).
//
// The seat map is built once per concert (a DocumentFragment); afterwards a seat changes by looking its element up
// in a Map and setting one attribute, data-status, and changes are drawn at most once per animation frame, so a
// 5,000-seat concert with a busy event stream does not stall the browser.

const SESSION_KEY = 'boxoffice.session';
const STATUSES = new Set(['free', 'held', 'sold']);
/// A stream that failed for good (not one the browser retries itself) is opened again after this, doubling up to
/// the maximum while it keeps failing.
const RECONNECT_DELAY_MS = 2000;
const RECONNECT_DELAY_MS_MAX = 60000;
/// A hidden tab gets no animation frames; its seat changes are drawn on a timer instead.
const HIDDEN_FLUSH_DELAY_MS = 250;
/// Arrow keys that jump several rows: PageUp and PageDown.
const PAGE_ROWS = 5;
/// Seconds before a hold's end at which the page says so.
const HOLD_WARNING_S = 60;

const FRIENDLY_MESSAGES = {
  sold_out: 'Sold out: there are not that many tickets left.',
  seat_taken: 'Someone else just took one of those seats. Pick other seats and try again.',
  payment_declined: 'Your card was declined. Nothing was charged, and the seats are back on sale.',
  hold_expired: 'Your hold expired and the seats are back on sale. Pick seats and hold them again.',
  unauthorized: 'Your session has ended. Please log in again.',
  invalid_credentials: 'Wrong username or password.',
  username_taken: 'That username is taken. Choose another one.',
  ticket_limit_reached: 'You have reached the ticket limit for this concert.',
  hold_limit_reached: 'You have too many holds open. Buy or cancel one first.',
  overloaded: 'The box office is very busy right now. Please try again in a moment.',
  card_required: 'Add a card to your account before you hold or buy seats.',
  card_expired: 'That card has expired. Use another card.',
  card_refused: 'The payment provider did not accept that card. Check its number, expiry and security code.',
  too_many_signups: 'Too many accounts were created from your network. Please try again later.',
  too_many_held_tickets: 'Too many seats are held from your network right now. Buy or cancel a hold first.',
};

const $ = (id) => document.getElementById(id);

const state = {
  /** @type {{id: string, username: string, token: string} | null} */
  session: null,
  /** Concerts by id, as last listed. */
  concerts: new Map(),
  /** The concert on screen. */
  concert: null,
  /** Counts up each time a concert is opened, so that late replies for the previous one are dropped. */
  generation: 0,
  events: null,
  reconnectTimer: 0,
  reconnectDelayMs: RECONNECT_DELAY_MS,
  // The seat map.
  seats: new Map(), // seat id -> element
  statuses: new Map(), // seat id -> status drawn
  grid: [], // rows in visual order, each an array of seat ids
  position: new Map(), // seat id -> [row index, column index] in grid
  focused: null, // the seat with tabindex 0
  selected: new Set(),
  pending: new Map(), // seat id -> status not drawn yet
  flushScheduled: false,
  /** Seats of a hold request in flight: their turning held is no surprise. */
  requested: new Set(),
  /** @type {{id: string, concertId: string, seats: string[], deadline: number, purchasing: boolean, warned: boolean} | null} */
  hold: null,
  countdownTimer: 0,
  qrUrls: new Map(), // ticket id -> blob: URL
  busy: false,
};

// ---- The API ----

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function bearer() {
  if (!state.session) throw new ApiError(401, 'not_signed_in', 'Log in or sign up first.');
  return `Bearer ${state.session.token}`;
}

/** Sends a request; resolves to a 2xx response or rejects with an ApiError carrying the error body's code. */
async function send(path, options) {
  let response;
  try {
    response = await fetch(path, { ...options, cache: 'no-store' });
  } catch {
    throw new ApiError(0, 'network', 'The box office could not be reached. Check your connection and try again.');
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const error = body && body.error;
    throw new ApiError(
      response.status,
      (error && error.code) || `http_${response.status}`,
      (error && error.message) || `The box office answered ${response.status}.`,
    );
  }
  return response;
}

/** A JSON request; resolves to {response, data} or rejects with an ApiError carrying the error body's code. */
async function api(method, path, { body, auth = false, idempotent = false } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (auth) headers.authorization = bearer();
  // A fresh key per attempt: the server answers a repeat of the same key with the first outcome.
  if (idempotent) headers['idempotency-key'] = uuid();
  const response = await send(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  return { response, data };
}

/** A random version 4 UUID (crypto.randomUUID needs a secure context; getRandomValues does not). */
function uuid() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const segment = encodeURIComponent;

// ---- Messages ----

function say(text, kind = 'info', code = '') {
  const message = $('message');
  message.dataset.kind = kind;
  message.dataset.code = code;
  message.textContent = text;
}

function sayError(error) {
  if (!(error instanceof ApiError)) {
    say('Something went wrong in the page. Reload it and try again.', 'error', 'page');
    return;
  }
  say(FRIENDLY_MESSAGES[error.code] || error.message, 'error', error.code);
  if (error.code === 'unauthorized' && state.session) forgetSession();
}

/** Runs one user action at a time: a second click while one is in flight does nothing. */
async function action(button, work) {
  if (state.busy) return;
  state.busy = true;
  button.setAttribute('aria-disabled', 'true');
  try {
    await work();
  } catch (error) {
    sayError(error);
  } finally {
    state.busy = false;
    button.removeAttribute('aria-disabled');
  }
}

// ---- Session ----

function loadSession() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    if (stored && typeof stored.id === 'string' && typeof stored.token === 'string') state.session = stored;
  } catch {
    sessionStorage.removeItem(SESSION_KEY);
  }
}

function startSession(session) {
  state.session = session;
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  showSession();
  loadTickets();
}

function forgetSession() {
  state.session = null;
  sessionStorage.removeItem(SESSION_KEY);
  for (const url of state.qrUrls.values()) URL.revokeObjectURL(url);
  state.qrUrls.clear();
  $('tickets').replaceChildren();
  endHold();
  showSession();
}

function showSession() {
  const signedIn = state.session !== null;
  $('who').hidden = !signedIn;
  $('who-name').textContent = signedIn ? state.session.username : '';
  $('account').hidden = signedIn;
  $('tickets-panel').hidden = !signedIn;
}

async function signUp(form) {
  const fields = new FormData(form);
  const username = String(fields.get('username')).trim();
  const body = {
    username,
    password: String(fields.get('password')),
    card: {
      type: String(fields.get('type')),
      holder_name: String(fields.get('holder_name')).trim(),
      number: String(fields.get('number')).replace(/[\s-]/g, ''),
      exp_month: Number(fields.get('exp_month')),
      exp_year: Number(fields.get('exp_year')),
      cvv: String(fields.get('cvv')).trim(),
    },
  };
  const { data } = await api('POST', '/users', { body });
  form.reset();
  startSession({ id: data.id, username: data.username, token: data.token });
  say(`Welcome, ${data.username}. Pick a concert below.`, 'success');
}

async function logIn(form) {
  const fields = new FormData(form);
  const username = String(fields.get('username')).trim();
  const { data } = await api('POST', '/users/verify', {
    body: { username, password: String(fields.get('password')) },
  });
  form.reset();
  startSession({ id: data.id, username, token: data.token });
  say(`Signed in as ${username}.`, 'success');
}

async function logOut() {
  if (state.session) {
    try {
      await api('POST', '/users/logout', { auth: true });
    } catch {
      // The token is forgotten here whatever the server said; it expires by itself.
    }
  }
  forgetSession();
  say('Signed out.');
}

// ---- Concerts ----

async function loadConcerts() {
  const { data } = await api('GET', '/concerts');
  state.concerts = new Map(data.concerts.map((concert) => [concert.id, concert]));
  const list = $('concerts');
  const items = data.concerts.map((concert) => {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'concert';
    button.dataset.concert = concert.id;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = concert.name;
    const details = document.createElement('span');
    details.className = 'details';
    details.textContent = `${formatDate(concert.starts_at)} · ${concert.kind === 'seated' ? 'seated' : 'general admission'} · ${
      concert.remaining > 0 ? `${concert.remaining} left` : 'sold out'
    }`;
    button.append(name, details);
    if (state.concert && state.concert.id === concert.id) button.setAttribute('aria-current', 'true');
    item.append(button);
    return item;
  });
  if (items.length === 0) {
    const empty = document.createElement('li');
    empty.textContent = 'No concerts yet.';
    items.push(empty);
  }
  list.replaceChildren(...items);
}

function formatDate(rfc3339) {
  const date = new Date(rfc3339);
  return Number.isNaN(date.getTime()) ? rfc3339 : date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

function formatPrice(cents) {
  return (cents / 100).toFixed(2);
}

function concertFromHash() {
  const match = /(?:^#|&)concert=([^&]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

async function openConcert(id) {
  const generation = ++state.generation;
  closeStream();
  clearMap();
  let concert;
  try {
    ({ data: concert } = await api('GET', `/concerts/${segment(id)}`));
  } catch (error) {
    if (generation === state.generation) {
      $('concert').hidden = true;
      sayError(error);
    }
    return;
  }
  if (generation !== state.generation) return;
  state.concert = concert;
  for (const button of document.querySelectorAll('#concerts [data-concert]')) {
    if (button.dataset.concert === id) button.setAttribute('aria-current', 'true');
    else button.removeAttribute('aria-current');
  }
  $('concert-name').textContent = concert.name;
  $('concert-meta').textContent = `${formatDate(concert.starts_at)} · ${formatPrice(concert.price_cents)} per ticket · ${concert.capacity} ${
    concert.kind === 'seated' ? 'seats' : 'places'
  }`;
  applyCounts(concert);
  $('concert').hidden = false;
  $('seated').hidden = concert.kind !== 'seated';
  $('general').hidden = concert.kind !== 'general';
  if (concert.kind === 'seated') {
    try {
      const { data } = await api('GET', `/concerts/${segment(id)}/seats`);
      if (generation !== state.generation) return;
      buildMap(data.seats);
    } catch (error) {
      sayError(error);
    }
    showHold();
  }
  state.reconnectDelayMs = RECONNECT_DELAY_MS;
  openStream(id, generation);
}

function applyCounts(counts) {
  for (const field of ['remaining', 'held', 'sold']) {
    if (Number.isInteger(counts[field])) $(field).textContent = String(counts[field]);
  }
}

// ---- The event stream ----

function openStream(concertId, generation) {
  const source = new EventSource(`/concerts/${segment(concertId)}/events`);
  state.events = source;
  setLive('connecting');
  source.addEventListener('open', () => setLive('live'));
  source.addEventListener('snapshot', (event) => {
    const data = parseEvent(event);
    if (!data) return;
    applyCounts(data);
    if (Array.isArray(data.seats)) applySnapshot(data.seats);
    state.reconnectDelayMs = RECONNECT_DELAY_MS;
    setLive('live');
  });
  source.addEventListener('seat', (event) => {
    const data = parseEvent(event);
    if (data && typeof data.id === 'string' && STATUSES.has(data.status)) seatChanged(data.id, data.status);
  });
  source.addEventListener('availability', (event) => {
    const data = parseEvent(event);
    if (data) applyCounts(data);
  });
  source.addEventListener('error', () => {
    if (source.readyState !== EventSource.CLOSED) {
      // The browser reconnects by itself, with Last-Event-ID.
      setLive('reconnecting');
      return;
    }
    // Refused (not a stream, or an error status): the browser gives up, so open it again later, from a fresh read.
    source.close();
    if (state.events === source) state.events = null;
    setLive('offline');
    const delay = state.reconnectDelayMs;
    state.reconnectDelayMs = Math.min(delay * 2, RECONNECT_DELAY_MS_MAX);
    state.reconnectTimer = setTimeout(() => {
      if (generation === state.generation) refreshAndListen(concertId, generation);
    }, delay);
  });
}

async function refreshAndListen(concertId, generation) {
  try {
    const { data: concert } = await api('GET', `/concerts/${segment(concertId)}`);
    if (generation !== state.generation) return;
    applyCounts(concert);
    if (concert.kind === 'seated') {
      const { data } = await api('GET', `/concerts/${segment(concertId)}/seats`);
      if (generation !== state.generation) return;
      applySnapshot(data.seats);
    }
  } catch {
    // Shown as offline; the stream is tried again below all the same.
  }
  if (generation === state.generation) openStream(concertId, generation);
}

function closeStream() {
  clearTimeout(state.reconnectTimer);
  if (state.events) state.events.close();
  state.events = null;
}

function parseEvent(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

function setLive(live) {
  const element = $('live');
  element.dataset.state = live;
  element.textContent = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', offline: 'offline, retrying' }[live];
}

// ---- The seat map ----

/** Seat ids are SECTION-ROW-SEAT; section names are letters and digits. */
function parseSeat(id) {
  const match = /^(.+)-(\d+)-(\d+)$/.exec(id);
  return match ? { section: match[1], row: Number(match[2]), seat: Number(match[3]) } : null;
}

function clearMap() {
  state.seats.clear();
  state.statuses.clear();
  state.grid = [];
  state.position.clear();
  state.focused = null;
  state.selected.clear();
  state.pending.clear();
  $('seatmap').replaceChildren();
  showSelection();
}

/** Draws the whole map once: sections in the order the server lists them, rows and seats in number order. */
function buildMap(seats) {
  clearMap();
  const sections = new Map();
  for (const { id, status } of seats) {
    const place = parseSeat(id);
    if (!place || !STATUSES.has(status)) continue;
    if (!sections.has(place.section)) sections.set(place.section, new Map());
    const rows = sections.get(place.section);
    if (!rows.has(place.row)) rows.set(place.row, []);
    rows.get(place.row).push({ id, seat: place.seat, status });
  }
  const fragment = document.createDocumentFragment();
  for (const [section, rows] of sections) {
    const group = document.createElement('div');
    group.className = 'section';
    group.setAttribute('role', 'rowgroup');
    group.setAttribute('aria-label', `Section ${section}`);
    const title = document.createElement('div');
    title.className = 'section-title';
    title.setAttribute('aria-hidden', 'true');
    title.textContent = `Section ${section}`;
    group.append(title);
    for (const row of [...rows.keys()].sort((a, b) => a - b)) {
      const rowElement = document.createElement('div');
      rowElement.className = 'row';
      rowElement.setAttribute('role', 'row');
      const header = document.createElement('span');
      header.className = 'row-label';
      header.setAttribute('role', 'rowheader');
      header.textContent = `${section}${row}`;
      rowElement.append(header);
      const ids = [];
      for (const { id, seat, status } of rows.get(row).sort((a, b) => a.seat - b.seat)) {
        const cell = document.createElement('div');
        cell.className = 'seat';
        cell.setAttribute('role', 'gridcell');
        cell.tabIndex = -1;
        cell.dataset.seat = id;
        cell.dataset.status = status;
        cell.textContent = String(seat);
        rowElement.append(cell);
        state.seats.set(id, cell);
        state.statuses.set(id, status);
        state.position.set(id, [state.grid.length, ids.length]);
        ids.push(id);
      }
      state.grid.push(ids);
      group.append(rowElement);
    }
    fragment.append(group);
  }
  $('seatmap').replaceChildren(fragment);
  const first = state.grid.length > 0 ? state.grid[0][0] : null;
  if (first) setFocusable(first);
  markHeld();
}

/** Replaces the whole map state: redrawn in place when the seats are the same, rebuilt otherwise. */
function applySnapshot(seats) {
  const same = seats.length === state.seats.size && seats.every((seat) => state.seats.has(seat.id));
  if (!same) {
    buildMap(seats);
    return;
  }
  state.pending.clear();
  for (const { id, status } of seats) {
    if (STATUSES.has(status)) state.pending.set(id, status);
  }
  scheduleFlush();
}

function seatChanged(id, status) {
  state.pending.set(id, status);
  const hold = currentHold();
  if (hold && !hold.purchasing && status === 'free' && hold.seats.includes(id)) {
    // Our hold's seats went back on sale without us cancelling: the hold expired.
    endHold();
    say(FRIENDLY_MESSAGES.hold_expired, 'error', 'hold_expired');
  }
  scheduleFlush();
}

function scheduleFlush() {
  if (state.flushScheduled) return;
  state.flushScheduled = true;
  if (document.hidden) setTimeout(flush, HIDDEN_FLUSH_DELAY_MS);
  else requestAnimationFrame(flush);
}

/** Draws every pending change: one attribute per changed seat. */
function flush() {
  state.flushScheduled = false;
  const pending = state.pending;
  state.pending = new Map();
  const taken = [];
  for (const [id, status] of pending) {
    if (state.statuses.get(id) === status) continue;
    const cell = state.seats.get(id);
    if (!cell) continue;
    state.statuses.set(id, status);
    cell.dataset.status = status;
    if (status !== 'free' && state.selected.has(id)) {
      unselect(id);
      if (!state.requested.has(id)) taken.push(id);
    }
    if (id === state.focused) describeSeat(cell);
  }
  if (taken.length > 0) {
    showSelection();
    say(`Someone else just took ${taken.join(', ')}; removed from your selection.`, 'error', 'seat_taken');
  }
}

function describeSeat(cell) {
  const place = parseSeat(cell.dataset.seat);
  const status = state.statuses.get(cell.dataset.seat);
  const mine = cell.dataset.mine === 'true' ? ', held for you' : '';
  cell.setAttribute('aria-label', `Section ${place.section}, row ${place.row}, seat ${place.seat}, ${status}${mine}`);
}

function setFocusable(id) {
  if (state.focused && state.focused !== id) {
    const previous = state.seats.get(state.focused);
    if (previous) previous.tabIndex = -1;
  }
  const cell = state.seats.get(id);
  if (!cell) return null;
  state.focused = id;
  cell.tabIndex = 0;
  return cell;
}

function moveTo(row, column) {
  if (state.grid.length === 0) return;
  const r = Math.max(0, Math.min(state.grid.length - 1, row));
  const ids = state.grid[r];
  const c = Math.max(0, Math.min(ids.length - 1, column));
  const cell = setFocusable(ids[c]);
  if (cell) cell.focus();
}

function onMapKey(event) {
  const cell = event.target.closest('[data-seat]');
  if (!cell || event.altKey || event.metaKey) return;
  const [row, column] = state.position.get(cell.dataset.seat);
  const last = state.grid[row].length - 1;
  switch (event.key) {
    case 'ArrowLeft': moveTo(row, column - 1); break;
    case 'ArrowRight': moveTo(row, column + 1); break;
    case 'ArrowUp': moveTo(row - 1, column); break;
    case 'ArrowDown': moveTo(row + 1, column); break;
    case 'PageUp': moveTo(row - PAGE_ROWS, column); break;
    case 'PageDown': moveTo(row + PAGE_ROWS, column); break;
    case 'Home': event.ctrlKey ? moveTo(0, 0) : moveTo(row, 0); break;
    case 'End': event.ctrlKey ? moveTo(state.grid.length - 1, Infinity) : moveTo(row, last); break;
    case 'Enter':
    case ' ':
      toggle(cell.dataset.seat);
      break;
    default:
      return;
  }
  event.preventDefault();
}

function onMapClick(event) {
  const cell = event.target.closest('[data-seat]');
  if (!cell) return;
  setFocusable(cell.dataset.seat);
  cell.focus();
  toggle(cell.dataset.seat);
}

function onMapFocus(event) {
  const cell = event.target.closest('[data-seat]');
  if (!cell) return;
  setFocusable(cell.dataset.seat);
  describeSeat(cell);
}

function toggle(id) {
  const cell = state.seats.get(id);
  if (!cell) return;
  if (state.selected.has(id)) {
    unselect(id);
  } else {
    const status = state.statuses.get(id);
    if (status !== 'free') {
      const why = cell.dataset.mine === 'true' ? 'held for you' : status === 'held' ? 'held by someone else' : 'sold';
      say(`Seat ${id} is ${why}.`, 'info', `seat_${status}`);
      return;
    }
    state.selected.add(id);
    cell.setAttribute('aria-selected', 'true');
  }
  showSelection();
}

function unselect(id) {
  state.selected.delete(id);
  const cell = state.seats.get(id);
  if (cell) cell.removeAttribute('aria-selected');
}

function clearSelection() {
  for (const id of [...state.selected]) unselect(id);
  showSelection();
}

function showSelection() {
  $('selection').textContent = state.selected.size === 0 ? 'none' : [...state.selected].join(', ');
}

// ---- Holds ----

async function holdSeats() {
  if (!state.session) return say('Log in or sign up to hold seats.', 'error', 'not_signed_in');
  if (!state.concert) return;
  if (state.hold) return say('Proceed with or cancel the seats you hold first.', 'error', 'hold_open');
  const seats = [...state.selected];
  if (seats.length === 0) return say('Select one or more free seats first.', 'error', 'no_selection');
  state.requested = new Set(seats);
  try {
    const { response, data } = await api('POST', '/holds', {
      auth: true,
      body: { concert_id: state.concert.id, seats },
    });
    clearSelection();
    startHold(data, response);
    say(`Held ${seats.join(', ')} for you. Proceed to pay, or cancel.`, 'success', 'held');
  } finally {
    state.requested = new Set();
  }
}

/** The hold's deadline on this machine's clock, from the server's clock (the Date header), so skew does not matter. */
function startHold(hold, response) {
  const date = Date.parse(response.headers.get('date') || '');
  // The Date header is cut to the second: half a second later is the best guess of the server's time.
  const serverNow = Number.isNaN(date) ? Date.now() : date + 500;
  const lifetimeMs = Math.max(0, Date.parse(hold.expires_at) - serverNow);
  state.hold = {
    id: hold.id,
    concertId: hold.concert_id,
    seats: hold.seats || [],
    deadline: Date.now() + lifetimeMs,
    purchasing: false,
    // A hold shorter than the warning gets none: it would only hide the message that it was made.
    warned: lifetimeMs <= HOLD_WARNING_S * 1000,
  };
  clearInterval(state.countdownTimer);
  state.countdownTimer = setInterval(tickHold, 1000);
  showHold();
  tickHold();
}

function tickHold() {
  const hold = state.hold;
  if (!hold) return;
  const left = Math.max(0, Math.ceil((hold.deadline - Date.now()) / 1000));
  $('countdown').textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}`;
  if (left <= HOLD_WARNING_S && !hold.warned && left > 0) {
    hold.warned = true;
    say(`${HOLD_WARNING_S} seconds left to pay for ${hold.seats.join(', ')}.`, 'info', 'hold_ending');
  }
  if (left === 0 && !hold.purchasing) {
    endHold();
    say(FRIENDLY_MESSAGES.hold_expired, 'error', 'hold_expired');
  }
}

/** Our hold, when it is for the concert on screen (seat ids repeat from one concert to the next). */
function currentHold() {
  const hold = state.hold;
  return hold && state.concert && hold.concertId === state.concert.id ? hold : null;
}

function showHold() {
  const hold = currentHold();
  $('hold-panel').hidden = hold === null;
  if (hold) $('hold-seats').textContent = hold.seats.join(', ');
  markHeld();
}

/** Marks the seats of our own hold, so that they read as ours rather than someone else's. */
function markHeld() {
  for (const cell of document.querySelectorAll('#seatmap [data-mine]')) cell.removeAttribute('data-mine');
  const hold = currentHold();
  if (!hold) return;
  for (const id of hold.seats) {
    const cell = state.seats.get(id);
    if (cell) cell.dataset.mine = 'true';
  }
}

function endHold() {
  clearInterval(state.countdownTimer);
  state.hold = null;
  showHold();
}

async function proceed() {
  const hold = state.hold;
  if (!hold) return say('Nothing is held. Select seats and hold them first.', 'error', 'no_hold');
  hold.purchasing = true;
  try {
    const { data: order } = await api('POST', `/holds/${segment(hold.id)}/purchase`, { auth: true, idempotent: true });
    endHold();
    say(orderMessage(order), 'success', `order_${order.status}`);
    refreshAfterOrder();
  } catch (error) {
    // An overloaded or unreachable server never started the purchase: the hold stands and may be tried again.
    // Any other failure released the seats.
    if (error instanceof ApiError && (error.status === 0 || error.status === 503)) hold.purchasing = false;
    else endHold();
    throw error;
  }
}

async function cancelHold() {
  const hold = state.hold;
  if (!hold) return say('Nothing is held.', 'info', 'no_hold');
  hold.purchasing = true;
  try {
    await api('DELETE', `/holds/${segment(hold.id)}`, { auth: true });
    endHold();
    say(`Cancelled: ${hold.seats.join(', ')} are back on sale.`, 'success', 'cancelled');
  } catch (error) {
    if (error instanceof ApiError && error.code === 'hold_not_found') {
      endHold();
      say('That hold had already ended.', 'info', 'hold_not_found');
      return;
    }
    hold.purchasing = false;
    throw error;
  }
}

function orderMessage(order) {
  const count = order.tickets.length;
  const what = order.tickets.some((ticket) => ticket.seat)
    ? order.tickets.map((ticket) => ticket.seat).join(', ')
    : `${count} ticket${count === 1 ? '' : 's'}`;
  if (order.status === 'confirmed') return `Bought ${what} for ${formatPrice(order.amount_cents)}. Your tickets are below.`;
  return `Your order is ${order.status}.`;
}

// ---- General admission ----

async function orderTickets(form) {
  if (!state.session) return say('Log in or sign up to order tickets.', 'error', 'not_signed_in');
  if (!state.concert) return;
  const quantity = Number(new FormData(form).get('quantity'));
  if (!Number.isInteger(quantity) || quantity < 1) return say('Choose how many tickets, at least one.', 'error', 'quantity');
  const { data: order } = await api('POST', '/orders', {
    auth: true,
    idempotent: true,
    body: { concert_id: state.concert.id, quantity },
  });
  say(orderMessage(order), 'success', `order_${order.status}`);
  refreshAfterOrder();
}

/** New tickets to show, and new counts in the list of concerts. */
function refreshAfterOrder() {
  loadTickets();
  loadConcerts().catch(() => {});
}

// ---- Tickets ----

/** Bumped by every loadTickets call: an older call that is still fetching QR codes stops. */
let ticketsGeneration = 0;

async function loadTickets() {
  if (!state.session) return;
  const generation = ++ticketsGeneration;
  const user = state.session.id;
  const current = () => generation === ticketsGeneration && state.session && state.session.id === user;
  let tickets;
  try {
    ({ data: { tickets } } = await api('GET', `/users/${segment(user)}/tickets`, { auth: true }));
  } catch (error) {
    sayError(error);
    return;
  }
  if (!current()) return;
  const items = tickets.map((ticket) => {
    const item = document.createElement('li');
    item.className = 'ticket';
    item.dataset.ticket = ticket.id;
    const concert = state.concerts.get(ticket.concert_id);
    const what = ticket.seat ? `seat ${ticket.seat}` : 'general admission';
    const image = document.createElement('img');
    image.width = 160;
    image.height = 160;
    image.alt = `QR code of your ticket for ${concert ? concert.name : 'a concert'}, ${what}`;
    const caption = document.createElement('p');
    const name = document.createElement('strong');
    name.textContent = concert ? concert.name : ticket.concert_id;
    caption.append(name, document.createElement('br'), what, ticket.checked_in_at ? ' · checked in' : '');
    item.append(image, caption);
    const cached = state.qrUrls.get(ticket.id);
    if (cached) image.src = cached;
    return item;
  });
  if (items.length === 0) {
    const empty = document.createElement('li');
    empty.textContent = 'No tickets yet.';
    items.push(empty);
  }
  $('tickets').replaceChildren(...items);
  // One at a time: a user with many tickets does not open many requests at once.
  for (const ticket of tickets) {
    // Stops once another call has started, or the user logged out or changed.
    if (!current()) return;
    if (state.qrUrls.has(ticket.id)) continue;
    try {
      const url = await fetchQr(user, ticket.id);
      const image = document.querySelector(`#tickets [data-ticket="${CSS.escape(ticket.id)}"] img`);
      if (image) image.src = url;
    } catch (error) {
      sayError(error);
      return;
    }
  }
}

/** The ticket's QR code, fetched with the bearer header and shown from a blob: URL: the token is in no URL. */
async function fetchQr(user, ticketId) {
  const response = await send(`/users/${segment(user)}/tickets/${segment(ticketId)}/qr`, {
    headers: { authorization: bearer() },
  });
  const url = URL.createObjectURL(await response.blob());
  const replaced = state.qrUrls.get(ticketId);
  if (replaced) URL.revokeObjectURL(replaced);
  state.qrUrls.set(ticketId, url);
  return url;
}

// ---- Wiring ----

function onSubmit(id, work) {
  const form = $(id);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!form.checkValidity()) {
      form.reportValidity();
      return;
    }
    action(form.querySelector('button[type="submit"]'), () => work(form));
  });
}

function onClick(id, work) {
  const button = $(id);
  button.addEventListener('click', () => action(button, work));
}

async function start() {
  loadSession();
  showSession();
  onSubmit('signup-form', signUp);
  onSubmit('login-form', logIn);
  onSubmit('general', orderTickets);
  onClick('logout', logOut);
  onClick('hold', holdSeats);
  onClick('proceed', proceed);
  onClick('cancel', cancelHold);
  const map = $('seatmap');
  map.addEventListener('click', onMapClick);
  map.addEventListener('keydown', onMapKey);
  map.addEventListener('focusin', onMapFocus);
  $('concerts').addEventListener('click', (event) => {
    const button = event.target.closest('[data-concert]');
    if (button) location.hash = `concert=${segment(button.dataset.concert)}`;
  });
  window.addEventListener('hashchange', () => {
    const id = concertFromHash();
    if (id) openConcert(id);
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.pending.size > 0) flush();
  });
  try {
    await loadConcerts();
  } catch (error) {
    sayError(error);
  }
  const id = concertFromHash();
  if (id) openConcert(id);
  if (state.session) loadTickets();
}

start();
