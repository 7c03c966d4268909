// nodelet's dashboard: one page, no framework. Every list is the API's list followed by its
// watch; the node's graphs read the API's hour of samples. Requests go to `k8s/<path>` below
// the page's own base (this API's `/<path>`), so the page works the same through
// `kubectl proxy` (kubectl's credentials) and directly on the API (a bearer token).
'use strict';

const base = location.pathname.replace(/[^/]*$/, '');
const main = document.getElementById('main');
const nsSelect = document.getElementById('namespace');
let token = sessionStorage.getItem('nodelet-token') || '';
let current = null; // the view on screen: { stop() }

class AuthError extends Error {}

// ---- the API ----------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra);
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

async function request(path, options = {}) {
  const r = await fetch(base + 'k8s' + path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (r.status === 401) {
    if (!document.getElementById('login')) login();
    throw new AuthError('unauthorized');
  }
  if (!r.ok) {
    let message = r.status + ' ' + r.statusText;
    try { const s = await r.json(); if (s.message) message = s.message; } catch (e) { /* not a Status */ }
    throw new Error(message);
  }
  return r;
}

const getJSON = async (path, options) => (await request(path, options)).json();

// Lines of a streamed response body, as they come.
async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let i;
    while ((i = pending.indexOf('\n')) >= 0) {
      yield pending.slice(0, i);
      pending = pending.slice(i + 1);
    }
  }
  if (pending) yield pending;
}

const key = (o) => (o.metadata.namespace || '') + '/' + o.metadata.name;

// A list kept current by its watch (relisted after 410 Gone); `changed(items)` is called once
// per animation frame at most.
class Watch {
  constructor(path, params, changed) {
    this.path = path;
    this.params = params || {};
    this.changed = changed;
    this.items = new Map();
    this.abort = new AbortController();
    this.scheduled = false;
    this.run();
  }

  stop() { this.abort.abort(); }

  notify() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.changed(this.items); });
  }

  url(extra) {
    const q = new URLSearchParams(Object.assign({}, this.params, extra));
    return this.path + '?' + q;
  }

  async list() {
    const l = await getJSON(this.url({}), { signal: this.abort.signal });
    this.items = new Map(l.items.map((o) => [key(o), o]));
    this.rv = l.metadata.resourceVersion;
    this.notify();
  }

  async run() {
    while (!this.abort.signal.aborted) {
      try {
        if (!this.rv) await this.list();
        const r = await request(this.url({ watch: '1', allowWatchBookmarks: 'true', resourceVersion: this.rv }), { signal: this.abort.signal });
        for await (const line of lines(r)) {
          if (!line.trim()) continue;
          const e = JSON.parse(line);
          if (e.type === 'ERROR') { this.rv = null; break; }
          this.rv = e.object.metadata.resourceVersion;
          if (e.type === 'BOOKMARK') continue;
          if (e.type === 'DELETED') this.items.delete(key(e.object));
          else this.items.set(key(e.object), e.object);
          this.notify();
        }
      } catch (e) {
        if (this.abort.signal.aborted || e instanceof AuthError) return;
        this.error = e;
        this.changed(this.items, e);
        await sleep(2000);
      }
    }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- formatting as kubectl prints ---------------------------------------------------------

function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

// kubectl's HumanDuration.
function human(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60), h = Math.floor(s / 3600), d = Math.floor(s / 86400), y = Math.floor(d / 365);
  if (s < 120) return s + 's';
  if (m < 10) return m + 'm' + (s % 60 ? (s % 60) + 's' : '');
  if (m < 180) return m + 'm';
  if (h < 8) return h + 'h' + (m % 60 ? (m % 60) + 'm' : '');
  if (h < 48) return h + 'h';
  if (h < 192) return d + 'd' + (h % 24 ? (h % 24) + 'h' : '');
  if (y < 2) return d + 'd';
  if (y < 8) return y + 'y' + (d % 365 ? (d % 365) + 'd' : '');
  return y + 'y';
}

const since = (t) => (t ? human((Date.now() - Date.parse(t)) / 1000) : '<unknown>');

// kubectl's pod STATUS, READY and RESTARTS columns (printPod).
function podColumns(p) {
  const st = p.status || {};
  const specs = (p.spec && p.spec.containers) || [];
  let reason = st.reason || st.phase || 'Pending';
  let restarts = 0, lastRestart = null, ready = 0, initializing = false;
  const inits = st.initContainerStatuses || [];
  inits.forEach((c, i) => {
    restarts += c.restartCount || 0;
    const s = c.state || {};
    if (s.terminated && s.terminated.exitCode === 0) return;
    if (c.started && c.ready) return; // a sidecar running
    initializing = true;
    if (s.terminated) reason = 'Init:' + (s.terminated.reason || (s.terminated.signal ? 'Signal:' + s.terminated.signal : 'ExitCode:' + s.terminated.exitCode));
    else if (s.waiting && s.waiting.reason && s.waiting.reason !== 'PodInitializing') reason = 'Init:' + s.waiting.reason;
    else reason = 'Init:' + i + '/' + ((p.spec.initContainers || []).length);
  });
  const cs = st.containerStatuses || [];
  if (!initializing) {
    let running = false;
    for (let i = cs.length - 1; i >= 0; i--) {
      const c = cs[i], s = c.state || {};
      restarts += c.restartCount || 0;
      const lt = c.lastState && c.lastState.terminated;
      if (lt && lt.finishedAt && (!lastRestart || lt.finishedAt > lastRestart)) lastRestart = lt.finishedAt;
      if (s.waiting && s.waiting.reason) reason = s.waiting.reason;
      else if (s.terminated && s.terminated.reason) reason = s.terminated.reason;
      else if (s.terminated) reason = s.terminated.signal ? 'Signal:' + s.terminated.signal : 'ExitCode:' + s.terminated.exitCode;
      else if (c.ready && s.running) { running = true; ready++; }
      else if (s.running) running = true;
    }
    if (reason === 'Completed' && running) reason = (st.conditions || []).some((c) => c.type === 'Ready' && c.status === 'True') ? 'Running' : 'NotReady';
  } else {
    cs.forEach((c) => { restarts += c.restartCount || 0; });
  }
  if (p.metadata.deletionTimestamp) reason = st.reason === 'NodeLost' ? 'Unknown' : 'Terminating';
  const restartText = restarts + (lastRestart ? ' (' + since(lastRestart) + ' ago)' : '');
  return { ready: ready + '/' + specs.length, status: reason, restarts: restartText };
}

function statusClass(s) {
  if (/^(Running|Completed|Succeeded|Active|True)$/.test(s)) return 'good';
  if (/Err|BackOff|Failed|OOM|Invalid|Unknown|False/.test(s)) return 'bad';
  return 'warn';
}

function quantity(q) { return q === undefined ? '' : String(q); }

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

// Kubernetes quantities to numbers (cores, bytes).
function parseQuantity(q) {
  if (q === undefined) return 0;
  const m = /^([0-9.]+)([a-zA-Z]*)$/.exec(String(q));
  if (!m) return 0;
  const n = parseFloat(m[1]);
  const f = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 }[m[2]];
  return n * (f ?? 1);
}

// ---- page frame ---------------------------------------------------------------------------

function show(html) { main.innerHTML = html; }

// A view's first complete drawing, as a User Timing mark (`<view>-ready`) the benchmark reads.
function ready(view) {
  if (!performance.getEntriesByName(view + '-ready').length) performance.mark(view + '-ready');
}

function error(e) {
  if (e instanceof AuthError) return;
  const message = e.message || String(e);
  if ([...main.querySelectorAll('.error')].some((b) => b.textContent === message)) return;
  const box = document.createElement('div');
  box.className = 'error';
  box.textContent = e.message || String(e);
  main.prepend(box);
  setTimeout(() => box.remove(), 8000);
}

// The namespace chosen above ('' for all), kept across visits.
let chosenNs = localStorage.getItem('nodelet-namespace') ?? '';
function namespace() { return chosenNs; }

// The namespace a ServiceAccount token belongs to (its JWT's claims), if it is one.
function tokenNamespace() {
  try {
    const claims = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return (claims['kubernetes.io'] || {}).namespace || null;
  } catch (e) { return null; }
}

function namespaceOptions(names) {
  if (chosenNs && !names.includes(chosenNs)) names = names.concat([chosenNs]).sort();
  nsSelect.innerHTML = '<option value="">all namespaces</option>' + names.map((n) => `<option>${esc(n)}</option>`).join('');
  nsSelect.value = chosenNs;
}

function login() {
  if (current) current.stop();
  current = { stop() {} };
  show(`<section class="card login"><h1>Sign in</h1>
    <p>Paste a bearer token: a ServiceAccount's (<code>kubectl create token &lt;name&gt;</code>)
    acts with that account's rights. Through <code>kubectl proxy</code> no token is needed.</p>
    <form id="login"><textarea id="token" placeholder="token" autocomplete="off"></textarea>
    <p><button class="primary" type="submit">Sign in</button></p></form></section>`);
  document.getElementById('login').onsubmit = (ev) => {
    ev.preventDefault();
    token = document.getElementById('token').value.trim();
    sessionStorage.setItem('nodelet-token', token);
    start();
  };
}

document.getElementById('signout').onclick = () => {
  token = '';
  sessionStorage.removeItem('nodelet-token');
  login();
};

// ---- views ----------------------------------------------------------------------------------

const views = {};

views.node = () => {
  let history = { points: [] };
  let nodes = new Map();
  const draw = () => {
    const cards = [...nodes.values()].map((n) => nodeCard(n, history)).join('');
    show(`<h1>Node</h1>${cards || '<p class="muted">No node has registered.</p>'}`);
    if (cards) ready('node');
  };
  const w = new Watch('/api/v1/nodes', {}, (items, e) => { if (e) return error(e); nodes = items; draw(); });
  let stopped = false;
  (async () => {
    while (!stopped) {
      try {
        const r = await fetch(base + 'history', { headers: headers() });
        if (r.ok) { history = await r.json(); draw(); }
      } catch (e) { /* the graphs wait for the next sample */ }
      await sleep(10000);
    }
  })();
  return { stop() { stopped = true; w.stop(); } };
};

function nodeCard(n, history) {
  const st = n.status || {};
  const info = st.nodeInfo || {};
  const ready = (st.conditions || []).find((c) => c.type === 'Ready');
  const conditions = (st.conditions || []).map((c) => `<tr><td>${esc(c.type)}</td>
    <td class="${c.type === 'Ready' ? statusClass(c.status) : (c.status === 'False' ? 'good' : 'bad')}">${esc(c.status)}</td>
    <td>${esc(c.reason)}</td><td class="wrap">${esc(c.message)}</td><td>${esc(since(c.lastHeartbeatTime))}</td></tr>`).join('');
  const names = [...new Set(Object.keys(st.capacity || {}).concat(Object.keys(st.allocatable || {})))].sort();
  const resources = names.map((r) => `<tr><td>${esc(r)}</td><td>${esc(quantity((st.capacity || {})[r]))}</td>
    <td>${esc(quantity((st.allocatable || {})[r]))}</td></tr>`).join('');
  const points = history.node === n.metadata.name ? history.points : [];
  const cores = parseQuantity((st.capacity || {}).cpu) || 1;
  const memory = parseQuantity((st.capacity || {}).memory) || 1;
  const last = points[points.length - 1];
  const cpuNow = last ? (last.nanoCores / 1e6).toFixed(0) + 'm of ' + cores + ' cores' : 'no sample yet';
  const memNow = last ? bytes(last.memoryWorkingSetBytes) + ' of ' + bytes(memory) : 'no sample yet';
  const addresses = (st.addresses || []).map((a) => `<span class="chip">${esc(a.type)}: ${esc(a.address)}</span>`).join('');
  const labels = Object.entries(n.metadata.labels || {}).map(([k, v]) => `<span class="chip">${esc(k)}=${esc(v)}</span>`).join('');
  return `<section class="card node" data-node="${esc(n.metadata.name)}">
    <h2>${esc(n.metadata.name)} <span class="${statusClass(ready ? ready.status : 'Unknown')}">${ready && ready.status === 'True' ? 'Ready' : 'NotReady'}</span></h2>
    <dl class="facts"><dt>Addresses</dt><dd>${addresses}</dd><dt>Kubelet</dt><dd>${esc(info.kubeletVersion)}</dd>
    <dt>OS</dt><dd>${esc(info.osImage)} (${esc(info.kernelVersion)}, ${esc(info.architecture)})</dd>
    <dt>Runtime</dt><dd>${esc(info.containerRuntimeVersion)}</dd><dt>Pod CIDR</dt><dd>${esc((n.spec || {}).podCIDR)}</dd>
    <dt>Age</dt><dd>${esc(since(n.metadata.creationTimestamp))}</dd><dt>Labels</dt><dd>${labels}</dd></dl>
    <h2>Usage, last hour</h2><div class="graphs">
    ${graph('CPU', cpuNow, points.map((p) => [p.time, p.nanoCores / 1e9]), cores)}
    ${graph('Memory (working set)', memNow, points.map((p) => [p.time, p.memoryWorkingSetBytes]), memory)}</div>
    <h2>Conditions</h2><div class="scroll"><table><thead><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th><th>Last heartbeat</th></tr></thead><tbody>${conditions}</tbody></table></div>
    <h2>Capacity</h2><div class="scroll"><table><thead><tr><th>Resource</th><th>Capacity</th><th>Allocatable</th></tr></thead><tbody>${resources}</tbody></table></div>
  </section>`;
}

// A line over the last hour, from 0 to `max`.
function graph(title, now, points, max) {
  const end = Date.now() / 1000, start = end - 3600;
  const xy = points.map(([t, v]) => `${(((t - start) / 3600) * 1000).toFixed(1)},${(100 - (Math.min(v, max) / max) * 100).toFixed(2)}`).join(' ');
  return `<div class="graph"><div class="title"><strong>${esc(title)}</strong><span class="muted">${esc(now)}</span></div>
    <svg viewBox="0 0 1000 100" preserveAspectRatio="none" role="img" aria-label="${esc(title)}"><polyline points="${xy}"/></svg>
    <div class="title muted"><span>-60 min</span><span>now</span></div></div>`;
}

views.namespaces = () => {
  const w = new Watch('/api/v1/namespaces', {}, (items, e) => {
    if (e) return error(e);
    const rows = [...items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((n) => {
      const phase = (n.status || {}).phase || 'Active';
      return `<tr><td><a href="#/pods" data-ns="${esc(n.metadata.name)}">${esc(n.metadata.name)}</a></td>
        <td class="${statusClass(phase)}">${esc(phase)}</td><td>${esc(since(n.metadata.creationTimestamp))}</td></tr>`;
    }).join('');
    show(`<h1>Namespaces</h1><div class="scroll"><table id="namespaces"><thead><tr><th>Name</th><th>Status</th><th>Age</th></tr></thead><tbody>${rows}</tbody></table></div>`);
    main.querySelectorAll('a[data-ns]').forEach((a) => { a.onclick = () => { nsSelect.value = a.dataset.ns; nsSelect.onchange(); }; });
  });
  return w;
};

views.pods = (params) => {
  const ns = namespace();
  const selector = params.get('labelSelector') || '';
  show(`<h1>Pods</h1><form class="toolbar" id="filter">
    <input id="selector" placeholder="label selector, e.g. app=web,tier!=db" value="${esc(selector)}" autocomplete="off">
    <button type="submit">Filter</button><span class="muted" id="count"></span></form>
    <div class="scroll"><table id="pods"><thead><tr>${ns ? '' : '<th>Namespace</th>'}<th>Name</th><th>Ready</th><th>Status</th>
    <th>Restarts</th><th>Age</th><th>IP</th><th>Node</th><th>Nominated node</th><th>Readiness gates</th><th></th></tr></thead>
    <tbody></tbody></table></div>`);
  document.getElementById('filter').onsubmit = (ev) => {
    ev.preventDefault();
    const s = document.getElementById('selector').value.trim();
    location.hash = '#/pods' + (s ? '?labelSelector=' + encodeURIComponent(s) : '');
  };
  const tbody = main.querySelector('#pods tbody');
  const count = document.getElementById('count');
  let items = new Map();
  let listed = false;
  const draw = () => {
    const started = performance.now();
    const pods = [...items.values()].sort((a, b) => key(a).localeCompare(key(b)));
    tbody.innerHTML = pods.map((p) => {
      const c = podColumns(p);
      const st = p.status || {};
      const gates = (p.spec.readinessGates || []);
      const gatesText = gates.length ? gates.filter((g) => (st.conditions || []).some((c) => c.type === g.conditionType && c.status === 'True')).length + '/' + gates.length : '<none>';
      const href = `#/pod/${encodeURIComponent(p.metadata.namespace)}/${encodeURIComponent(p.metadata.name)}`;
      return `<tr data-pod="${esc(key(p))}">${ns ? '' : `<td>${esc(p.metadata.namespace)}</td>`}
        <td><a href="${href}">${esc(p.metadata.name)}</a></td><td>${esc(c.ready)}</td>
        <td class="${statusClass(c.status)}">${esc(c.status)}</td><td>${esc(c.restarts)}</td>
        <td>${esc(since(p.metadata.creationTimestamp))}</td><td>${esc(st.podIP || '<none>')}</td>
        <td>${esc(p.spec.nodeName || '<none>')}</td><td>${esc(st.nominatedNodeName || '<none>')}</td><td>${esc(gatesText)}</td>
        <td>${(armed.get(key(p)) || 0) > Date.now()
          ? `<button class="danger armed" data-delete="${esc(key(p))}">Confirm delete</button>`
          : `<button class="danger" data-delete="${esc(key(p))}">Delete</button>`}</td></tr>`;
    }).join('');
    count.textContent = pods.length + (pods.length === 1 ? ' pod' : ' pods');
    performance.measure('pods-draw', { start: started });
    if (listed) ready('pods');
  };
  // A delete asks once more (the row's button, armed for 4 s, across redraws).
  const armed = new Map();
  tbody.onclick = (ev) => {
    const b = ev.target.closest('button[data-delete]');
    if (!b) return;
    const k = b.dataset.delete;
    if ((armed.get(k) || 0) > Date.now()) {
      armed.delete(k);
      b.disabled = true;
      deletePod(k);
      return;
    }
    armed.set(k, Date.now() + 4000);
    draw();
    setTimeout(draw, 4100);
  };
  const path = ns ? `/api/v1/namespaces/${encodeURIComponent(ns)}/pods` : '/api/v1/pods';
  const w = new Watch(path, selector ? { labelSelector: selector } : {}, (m, e) => { if (e) return error(e); items = m; listed = true; draw(); });
  const ages = setInterval(draw, 10000);
  return { stop() { w.stop(); clearInterval(ages); } };
};

// A delete button asks once more before it deletes.
function armedDelete(button, action) {
  if (button.classList.contains('armed')) { button.disabled = true; action(); return; }
  button.classList.add('armed');
  button.textContent = 'Confirm delete';
  setTimeout(() => { button.classList.remove('armed'); button.textContent = 'Delete'; }, 4000);
}

async function deletePod(k) {
  const [ns, name] = k.split('/');
  try {
    await request(`/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}`, { method: 'DELETE' });
  } catch (e) { error(e); }
}

views.pod = (params, ns, name) => {
  const podPath = `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}`;
  show(`<h1>Pod ${esc(ns)}/${esc(name)}</h1><div class="toolbar">
    <a href="#/logs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}"><button>Logs</button></a>
    <a href="#/shell/${encodeURIComponent(ns)}/${encodeURIComponent(name)}"><button>Shell</button></a>
    <button class="danger" id="delete">Delete</button></div>
    <div id="pod"><p class="muted">Loading…</p></div>
    <section class="card"><h2>Labels</h2><div id="labels"></div>
      <form id="edit-labels" class="toolbar" hidden><textarea id="labels-text" rows="4" style="min-height:5rem"></textarea>
      <button class="primary" type="submit">Save labels</button><button type="button" id="cancel-labels">Cancel</button></form>
      <button id="edit">Edit labels</button></section>
    <section class="card"><h2>Annotations</h2><div id="annotations"></div></section>
    <section class="card"><h2>Events</h2><div class="scroll"><table id="events"><thead><tr><th>Type</th><th>Reason</th><th>Age</th><th>From</th><th>Message</th></tr></thead><tbody></tbody></table></div></section>
    <section class="card"><h2>YAML <button id="yaml-refresh">Refresh</button></h2><pre id="yaml"></pre></section>`);
  let pod = null, events = null;
  const deleteButton = document.getElementById('delete');
  deleteButton.onclick = () => armedDelete(deleteButton, () => deletePod(ns + '/' + name));
  const labelsForm = document.getElementById('edit-labels');
  document.getElementById('edit').onclick = () => {
    document.getElementById('labels-text').value = Object.entries((pod && pod.metadata.labels) || {}).map(([k, v]) => k + '=' + v).join('\n');
    labelsForm.hidden = false;
  };
  document.getElementById('cancel-labels').onclick = () => { labelsForm.hidden = true; };
  labelsForm.onsubmit = async (ev) => {
    ev.preventDefault();
    const wanted = {};
    for (const line of document.getElementById('labels-text').value.split('\n')) {
      const t = line.trim();
      if (!t) continue;
      const i = t.indexOf('=');
      if (i <= 0) { error(new Error(`not key=value: ${t}`)); return; }
      wanted[t.slice(0, i).trim()] = t.slice(i + 1).trim();
    }
    const labels = Object.assign({}, wanted);
    for (const k of Object.keys((pod && pod.metadata.labels) || {})) if (!(k in wanted)) labels[k] = null;
    try {
      await request(podPath, { method: 'PATCH', headers: { 'Content-Type': 'application/merge-patch+json' }, body: JSON.stringify({ metadata: { labels } }) });
      labelsForm.hidden = true;
    } catch (e) { error(e); }
  };
  const yaml = async () => {
    try {
      const r = await request(podPath, { headers: { Accept: 'application/yaml' } });
      document.getElementById('yaml').textContent = await r.text();
    } catch (e) { error(e); }
  };
  document.getElementById('yaml-refresh').onclick = yaml;
  yaml();
  const draw = () => {
    const box = document.getElementById('pod');
    if (!pod) { box.innerHTML = '<p class="muted">This pod does not exist (any more).</p>'; return; }
    const st = pod.status || {};
    const c = podColumns(pod);
    const statuses = new Map([...(st.initContainerStatuses || []), ...(st.containerStatuses || []), ...(st.ephemeralContainerStatuses || [])].map((s) => [s.name, s]));
    const containers = [...(pod.spec.initContainers || []).map((x) => [x, 'init']), ...pod.spec.containers.map((x) => [x, '']), ...(pod.spec.ephemeralContainers || []).map((x) => [x, 'ephemeral'])];
    const rows = containers.map(([spec, kind]) => {
      const s = statuses.get(spec.name) || {};
      const [state, detail] = containerState(s.state || {});
      return `<tr><td>${esc(spec.name)}${kind ? ` <span class="muted">(${kind})</span>` : ''}</td><td>${esc(spec.image)}</td>
        <td class="${statusClass(state)}">${esc(state)}</td><td class="wrap">${esc(detail)}</td><td>${s.ready ? 'true' : 'false'}</td>
        <td>${esc(s.restartCount || 0)}</td><td>${esc(lastState(s.lastState || {}))}</td></tr>`;
    }).join('');
    const conditions = (st.conditions || []).map((x) => `<tr><td>${esc(x.type)}</td><td class="${statusClass(x.status)}">${esc(x.status)}</td>
      <td>${esc(x.reason)}</td><td>${esc(since(x.lastTransitionTime))}</td></tr>`).join('');
    box.innerHTML = `<section class="card"><dl class="facts">
      <dt>Status</dt><dd class="${statusClass(c.status)}" id="pod-status">${esc(c.status)}</dd><dt>Ready</dt><dd>${esc(c.ready)}</dd>
      <dt>Restarts</dt><dd>${esc(c.restarts)}</dd><dt>Node</dt><dd>${esc(pod.spec.nodeName || '<none>')}</dd>
      <dt>IP</dt><dd>${esc((st.podIPs || []).map((i) => i.ip).join(', ') || st.podIP || '<none>')}</dd><dt>QoS class</dt><dd>${esc(st.qosClass)}</dd>
      <dt>Started</dt><dd>${esc(st.startTime)}</dd><dt>Service account</dt><dd>${esc(pod.spec.serviceAccountName)}</dd>
      <dt>UID</dt><dd>${esc(pod.metadata.uid)}</dd></dl></section>
      <section class="card"><h2>Containers</h2><div class="scroll"><table id="containers"><thead><tr><th>Name</th><th>Image</th><th>State</th><th>Detail</th><th>Ready</th><th>Restarts</th><th>Last state</th></tr></thead><tbody>${rows}</tbody></table></div></section>
      <section class="card"><h2>Conditions</h2><div class="scroll"><table><thead><tr><th>Type</th><th>Status</th><th>Reason</th><th>Since</th></tr></thead><tbody>${conditions}</tbody></table></div></section>`;
    const chips = (m) => Object.entries(m || {}).map(([k, v]) => `<span class="chip">${esc(k)}=${esc(v)}</span>`).join('') || '<span class="muted">none</span>';
    document.getElementById('labels').innerHTML = chips(pod.metadata.labels);
    document.getElementById('annotations').innerHTML = chips(pod.metadata.annotations);
  };
  const drawEvents = () => {
    const time = (e) => e.lastTimestamp || e.eventTime || e.firstTimestamp || e.metadata.creationTimestamp || '';
    const first = (e) => e.firstTimestamp || e.eventTime || e.metadata.creationTimestamp || '';
    const list = [...events.values()].sort((a, b) => time(a).localeCompare(time(b)) || first(a).localeCompare(first(b)) || a.metadata.name.localeCompare(b.metadata.name));
    main.querySelector('#events tbody').innerHTML = list.map((e) => {
      const count = e.count > 1 ? ` (x${e.count} over ${since(first(e))})` : '';
      const from = (e.source && e.source.component) || e.reportingComponent || '';
      return `<tr><td class="${e.type === 'Warning' ? 'bad' : ''}">${esc(e.type)}</td><td>${esc(e.reason)}</td>
        <td>${esc(since(time(e)))}${esc(count)}</td><td>${esc(from)}</td><td class="wrap">${esc(e.message)}</td></tr>`;
    }).join('') || '<tr><td colspan="5" class="muted">No events.</td></tr>';
  };
  let eventWatch = null;
  const podWatch = new Watch(`/api/v1/namespaces/${encodeURIComponent(ns)}/pods`, { fieldSelector: 'metadata.name=' + name }, (items, e) => {
    if (e) return error(e);
    pod = items.get(ns + '/' + name) || null;
    draw();
    if (pod && !eventWatch) {
      eventWatch = new Watch(`/api/v1/namespaces/${encodeURIComponent(ns)}/events`, {
        fieldSelector: `involvedObject.name=${name},involvedObject.namespace=${ns},involvedObject.uid=${pod.metadata.uid}`,
      }, (m, err) => { if (err) return error(err); events = m; drawEvents(); });
    }
  });
  return { stop() { podWatch.stop(); if (eventWatch) eventWatch.stop(); } };
};

function containerState(s) {
  if (s.running) return ['Running', 'since ' + s.running.startedAt];
  if (s.terminated) {
    const t = s.terminated;
    return ['Terminated', `${t.reason || ''} exit code ${t.exitCode}${t.signal ? ' signal ' + t.signal : ''}${t.message ? ': ' + t.message : ''}`];
  }
  if (s.waiting) return ['Waiting', (s.waiting.reason || '') + (s.waiting.message ? ': ' + s.waiting.message : '')];
  return ['Waiting', ''];
}

function lastState(s) {
  if (!s.terminated) return '';
  return `${s.terminated.reason || 'Terminated'} (${s.terminated.exitCode}) ${since(s.terminated.finishedAt)} ago`;
}

// Container choice from the pod's spec.
async function containerPicker(ns, name, params, withInit) {
  const pod = await getJSON(`/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}`);
  const names = [...(withInit ? (pod.spec.initContainers || []) : []), ...pod.spec.containers, ...(pod.spec.ephemeralContainers || [])].map((c) => c.name);
  const wanted = params.get('container') || (pod.metadata.annotations || {})['kubectl.kubernetes.io/default-container'] || pod.spec.containers[0].name;
  return { names, chosen: names.includes(wanted) ? wanted : names[0] };
}

views.logs = (params, ns, name) => {
  const abort = new AbortController();
  (async () => {
    try {
      const { names, chosen } = await containerPicker(ns, name, params, true);
      const follow = params.get('follow') !== '0';
      const previous = params.get('previous') === '1';
      show(`<h1>Logs of ${esc(ns)}/${esc(name)}</h1><form class="toolbar" id="log-options">
        <label>Container <select id="container">${names.map((n) => `<option ${n === chosen ? 'selected' : ''}>${esc(n)}</option>`).join('')}</select></label>
        <label><input type="checkbox" id="follow" ${follow ? 'checked' : ''}> Follow</label>
        <label><input type="checkbox" id="previous" ${previous ? 'checked' : ''}> Previous instance</label>
        <a href="#/pod/${encodeURIComponent(ns)}/${encodeURIComponent(name)}">Back to the pod</a></form>
        <pre class="logs" id="logs"></pre>`);
      const options = document.getElementById('log-options');
      options.onchange = () => {
        const q = new URLSearchParams({ container: document.getElementById('container').value,
          follow: document.getElementById('follow').checked ? '1' : '0', previous: document.getElementById('previous').checked ? '1' : '0' });
        location.hash = `#/logs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}?${q}`;
      };
      const q = new URLSearchParams({ container: chosen, tailLines: '1000' });
      if (follow && !previous) q.set('follow', 'true');
      if (previous) q.set('previous', 'true');
      const out = document.getElementById('logs');
      const r = await request(`/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}/log?${q}`, { signal: abort.signal });
      for await (const line of lines(r)) {
        const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
        out.append(line + '\n');
        if (atEnd) out.scrollTop = out.scrollHeight;
      }
      out.append('— end of log —\n');
    } catch (e) { if (!abort.signal.aborted) error(e); }
  })();
  return { stop() { abort.abort(); } };
};

// Scripts and styles loaded once, when a view needs them.
const loaded = {};
function load(file) {
  if (!loaded[file]) {
    loaded[file] = new Promise((resolve, reject) => {
      const el = file.endsWith('.css') ? Object.assign(document.createElement('link'), { rel: 'stylesheet', href: file }) : Object.assign(document.createElement('script'), { src: file });
      el.onload = resolve;
      el.onerror = () => { delete loaded[file]; reject(new Error(`could not load ${file}: the dashboard's terminal is not installed on this node (make dashboard)`)); };
      document.head.append(el);
    });
  }
  return loaded[file];
}

function base64url(s) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(s))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

views.shell = (params, ns, name) => {
  let socket = null, term = null, stopped = false;
  (async () => {
    try {
      const { names, chosen } = await containerPicker(ns, name, params, false);
      show(`<h1>Shell in ${esc(ns)}/${esc(name)}</h1><div class="toolbar">
        <label>Container <select id="container">${names.map((n) => `<option ${n === chosen ? 'selected' : ''}>${esc(n)}</option>`).join('')}</select></label>
        <span class="muted" id="shell-state">connecting…</span>
        <a href="#/pod/${encodeURIComponent(ns)}/${encodeURIComponent(name)}">Back to the pod</a></div><div id="terminal"></div>`);
      document.getElementById('container').onchange = (ev) => {
        location.hash = `#/shell/${encodeURIComponent(ns)}/${encodeURIComponent(name)}?container=${encodeURIComponent(ev.target.value)}`;
      };
      await Promise.all([load('xterm.css'), load('xterm.js'), load('addon-fit.js')]);
      if (stopped) return;
      term = new window.Terminal({ cursorBlink: true, fontSize: 13, convertEol: false });
      const fit = new window.FitAddon.FitAddon();
      term.loadAddon(fit);
      term.open(document.getElementById('terminal'));
      fit.fit();
      const q = new URLSearchParams({ container: chosen, stdin: 'true', stdout: 'true', tty: 'true' });
      for (const c of ['sh', '-c', 'if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi']) q.append('command', c);
      const protocols = ['v5.channel.k8s.io', 'v4.channel.k8s.io'];
      if (token) protocols.push('base64url.bearer.authorization.k8s.io.' + base64url(token));
      const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base + `exec/${encodeURIComponent(ns)}/${encodeURIComponent(name)}?${q}`;
      socket = new WebSocket(url, protocols);
      socket.binaryType = 'arraybuffer';
      const state = document.getElementById('shell-state');
      const send = (channel, text) => {
        if (socket.readyState !== WebSocket.OPEN) return;
        const body = new TextEncoder().encode(text);
        const frame = new Uint8Array(body.length + 1);
        frame[0] = channel;
        frame.set(body, 1);
        socket.send(frame);
      };
      const size = () => send(4, JSON.stringify({ Width: term.cols, Height: term.rows }));
      socket.onopen = () => { state.textContent = 'connected (' + socket.protocol + ')'; size(); term.focus(); };
      socket.onmessage = (ev) => {
        const data = new Uint8Array(ev.data);
        if (data[0] === 1 || data[0] === 2) term.write(data.subarray(1));
        else if (data[0] === 3) {
          const status = JSON.parse(new TextDecoder().decode(data.subarray(1)));
          if (status.status !== 'Success') term.write('\r\n' + (status.message || 'the session failed') + '\r\n');
        }
      };
      socket.onclose = () => { state.textContent = 'session ended'; };
      socket.onerror = () => { state.textContent = 'the connection failed'; };
      term.onData((d) => send(0, d));
      term.onResize(size);
      window.onresize = () => fit.fit();
    } catch (e) { if (!stopped) error(e); }
  })();
  return { stop() { stopped = true; window.onresize = null; if (socket) socket.close(); if (term) term.dispose(); } };
};

views.create = () => {
  show(`<h1>Create from YAML</h1><form id="create"><p class="muted">One or more objects (YAML or JSON, documents separated by
    <code>---</code>, or a <code>kind: List</code>), created in the namespace chosen above when they name none.</p>
    <textarea id="manifest" spellcheck="false" placeholder="apiVersion: v1&#10;kind: Pod&#10;…"></textarea>
    <p><button class="primary" type="submit">Create</button></p></form><div id="results"></div>`);
  document.getElementById('create').onsubmit = async (ev) => {
    ev.preventDefault();
    const out = document.getElementById('results');
    try {
      const r = await fetch(base + 'create?namespace=' + encodeURIComponent(namespace() || 'default'), {
        method: 'POST', headers: headers({ 'Content-Type': 'application/yaml' }), body: document.getElementById('manifest').value });
      if (r.status === 401) return login();
      const answer = await r.json();
      if (!r.ok) throw new Error(answer.message || r.statusText);
      out.innerHTML = '<section class="card"><ul>' + answer.results.map((x) => x.created
        ? `<li class="good">${esc(x.kind)} ${esc(x.namespace ? x.namespace + '/' : '')}${esc(x.name)} created</li>`
        : `<li class="bad">${esc(x.kind)} ${esc(x.name)}: ${esc(x.message)}</li>`).join('') + '</ul></section>';
    } catch (e) { error(e); }
  };
  return { stop() {} };
};

// ---- routing ------------------------------------------------------------------------------

function route() {
  if (current) current.stop();
  const [path, query] = (location.hash.slice(1) || '/node').split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const view = views[parts[0]] ? parts[0] : 'node';
  document.querySelectorAll('header nav a').forEach((a) => a.classList.toggle('active', a.dataset.view === view || (view === 'pod' && a.dataset.view === 'pods')));
  document.getElementById('signout').hidden = !token;
  current = views[view](new URLSearchParams(query || ''), ...parts.slice(1));
}

let namespaces = null;
// The view and the namespaces at once; whichever the API refuses with 401 asks for a token.
function start() {
  if (namespaces) namespaces.stop();
  namespaceOptions([]);
  namespaces = new Watch('/api/v1/namespaces', {}, (items, e) => {
    if (e) {
      // A token that may not list namespaces (a ServiceAccount's) sees its own.
      const own = tokenNamespace();
      if (own && chosenNs !== own) { chosenNs = own; namespaces.stop(); namespaceOptions([own]); route(); }
      return;
    }
    namespaceOptions([...items.values()].map((n) => n.metadata.name).sort());
  });
  route();
}

nsSelect.onchange = () => {
  chosenNs = nsSelect.value;
  localStorage.setItem('nodelet-namespace', chosenNs);
  route();
};
window.addEventListener('hashchange', route);
// Leaving the page ends its watches (a page kept for "back" would hold its connections, and a
// browser has six per host over HTTP/1.1, which kubectl proxy speaks); coming back starts them.
window.addEventListener('pagehide', () => {
  if (current) current.stop();
  if (namespaces) namespaces.stop();
});
window.addEventListener('pageshow', (ev) => { if (ev.persisted) start(); });
start();
