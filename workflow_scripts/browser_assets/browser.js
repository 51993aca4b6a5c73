// shiftlens explanation browser: plain JS, no library, no network. Data files (data/*.js, written by
// workflow_scripts/browser_index.py) are loaded with <script src> when a page of rows needs them, so the
// page opens from disk (file://) and holds only the row chunks (the last 400) and index buckets it used.
// Every string from data goes into the page as text (textContent), never as HTML.
"use strict";
(function () {
  const manifest = (window.SHIFTLENS_DATA || {}).manifest;
  const $ = (id) => document.getElementById(id);
  const KINDS = { attention: "head dimensions", ffn: "FFN components" };
  // "1 head dimension", "2 FFN components": a count and its noun, in the singular for one
  const counted = (n, plural) => n + " " + (n === 1 ? plural.replace(/s$/, "") : plural);
  const state = { kind: "attention", view: "both", layer: "", head: "", word: "", page: 0 };
  const pending = new Map();
  const tables = new Map();
  let token = 0;

  // The status line, and body[data-state] (loading, ready, error) for whoever waits on the page.
  function status(text, state) {
    $("status").textContent = text;
    $("status").className = state === "error" ? "error" : "";
    document.body.dataset.state = state;
    if (state === "ready") document.body.dataset.readyAt = performance.now().toFixed(1);  // bench/browser_scale.py
  }

  // --- data ------------------------------------------------------------------------------------------

  function load(name) {
    const store = window.SHIFTLENS_DATA;
    if (Object.prototype.hasOwnProperty.call(store, name)) return Promise.resolve(store[name]);
    if (!pending.has(name)) {
      pending.set(name, new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = "data/" + encodeURIComponent(name) + ".js";
        script.onload = () => {
          script.remove();  // the data stays in SHIFTLENS_DATA
          if (Object.prototype.hasOwnProperty.call(store, name)) resolve(store[name]);
          else reject(new Error("data/" + name + ".js holds no data named " + name));
        };
        script.onerror = () => {
          script.remove();
          pending.delete(name);
          reject(new Error("could not load data/" + name + ".js (is the browser folder complete?)"));
        };
        document.head.appendChild(script);
      }));
    }
    return pending.get(name);
  }

  // The same hash as browser_index.fnv1a: 32-bit FNV-1a over the code points.
  function fnv1a(text) {
    let hash = 0x811c9dc5;
    for (const char of text) hash = Math.imul(hash ^ char.codePointAt(0), 0x01000193) >>> 0;
    return hash >>> 0;
  }

  function undelta(values) {
    let id = 0;
    return values.map((d) => (id += d));
  }

  // Row groups [layer, head, count] of a model, in row order, with each group's first row id.
  function table(kind, m) {
    const name = kind + "-" + m;
    if (!tables.has(name)) {
      let start = 0;
      const groups = manifest.kinds[kind].groups[m].map(([layer, head, count]) => {
        const group = { layer, head, count, start };
        start += count;
        return group;
      });
      tables.set(name, { groups });
    }
    return tables.get(name);
  }

  function groupOf(t, id) {
    let lo = 0, hi = t.groups.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (t.groups[mid].start <= id) lo = mid; else hi = mid - 1;
    }
    return t.groups[lo];
  }

  function selected(group) {
    return (state.layer === "" || group.layer === Number(state.layer)) &&
      (state.kind !== "attention" || state.head === "" || group.head === Number(state.head));
  }

  // A list of row ids, as ranges (a filter) or as ids (a search), sliced page by page.
  function rangeSet(groups) {
    const count = groups.reduce((n, g) => n + g.count, 0);
    return {
      count,
      slice(from, to) {
        const ids = [];
        let skipped = 0;
        for (const g of groups) {
          if (skipped + g.count <= from) { skipped += g.count; continue; }
          for (let i = Math.max(0, from - skipped); i < g.count && ids.length < to - from; i++) ids.push(g.start + i);
          skipped += g.count;
          if (ids.length >= to - from) break;
        }
        return ids;
      },
    };
  }

  function idSet(ids, groups) {
    return { count: ids.length, groups, slice: (from, to) => ids.slice(from, to) };
  }

  // Where a word's rows are: [layer, head, rows] per head holding it, most rows first ("which heads?").
  function heads(ids, t) {
    const counts = new Map();
    for (const id of ids) {
      const g = groupOf(t, id);
      counts.set(g, (counts.get(g) || 0) + 1);
    }
    return [...counts].map(([g, n]) => [g.layer, g.head, n]).sort((a, b) => b[2] - a[2] || a[0] - b[0] || a[1] - b[1]);
  }

  async function postings(kind, key) {
    const bucket = await load("index-" + kind + "-" + (fnv1a(key) % manifest.kinds[kind].buckets));
    const entry = Object.prototype.hasOwnProperty.call(bucket, key) ? bucket[key] : null;
    return manifest.models.map((_, m) => (entry ? undelta(entry[m]) : []));
  }

  // [layer, record] of each id, from the chunk files holding them (loaded at most once each).
  async function rows(kind, m, ids) {
    const t = table(kind, m);
    const size = manifest.kinds[kind].chunk_rows;
    const chunks = [...new Set(ids.map((id) => Math.floor(id / size)))];
    const files = new Map(await Promise.all(chunks.map(async (c) => [c, await load(kind + "-" + m + "-" + c)])));
    forget(chunks.map((c) => kind + "-" + m + "-" + c));
    return ids.map((id) => [groupOf(t, id).layer, files.get(Math.floor(id / size))[id % size]]);
  }

  // Chunks kept for going back and forth; the oldest are dropped past KEEP_CHUNKS (memory stays bounded
  // however long one browses the paper's 262,144 head dimensions).
  const KEEP_CHUNKS = 400;
  const recent = new Map();
  function forget(used) {
    for (const name of used) { recent.delete(name); recent.set(name, true); }
    for (const name of recent.keys()) {
      if (recent.size <= KEEP_CHUNKS) break;
      recent.delete(name);
      pending.delete(name);
      delete window.SHIFTLENS_DATA[name];
    }
  }

  // --- drawing ---------------------------------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function word(parent, text, key) {
    if (key && text.toLowerCase() === key) parent.appendChild(element("mark", "", text));
    else parent.appendChild(document.createTextNode(text));
  }

  function score(value) {
    if (value === null) return "";
    return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toPrecision(4);
  }

  function numberCell(tr, value) {
    tr.appendChild(element("td", "num", String(value)));
  }

  function headRow(tr, layer, [head, dim, rank, value, pairs], key) {
    [layer, head, dim, rank].forEach((v) => numberCell(tr, v));
    numberCell(tr, score(value));
    const td = element("td", "pairs");
    if (!pairs.length) td.appendChild(element("span", "none", "no pair"));
    for (const pair of pairs) {
      const span = element("span", "pair");
      pair.forEach((w, i) => {
        if (i) span.appendChild(document.createTextNode(" = "));
        const isolated = element("bdi");  // two right-to-left words are still drawn key, then query
        word(isolated, w, key);
        span.appendChild(isolated);
      });
      td.appendChild(span);
    }
    tr.appendChild(td);
  }

  const SHOWN_WORDS = 15;

  function wordChips(parent, words, key) {
    for (const w of words) {
      const span = element("span", "word");
      word(span, w, key);
      parent.appendChild(span);
    }
  }

  function componentRow(tr, layer, [rank, value, words, notes], key) {
    [layer, rank].forEach((v) => numberCell(tr, v));
    numberCell(tr, score(value));
    const td = element("td", "words");
    wordChips(td, words.slice(0, SHOWN_WORDS), key);
    if (words.length > SHOWN_WORDS) {
      const more = element("details");
      more.appendChild(element("summary", "", "+" + (words.length - SHOWN_WORDS) + " more"));
      wordChips(more, words.slice(SHOWN_WORDS), key);
      more.open = Boolean(key) && words.slice(SHOWN_WORDS).some((w) => w.toLowerCase() === key);
      td.appendChild(more);
    }
    tr.appendChild(td);
    const cell = element("td", "annotations");
    if (!notes.length) cell.appendChild(element("span", "none", "not annotated"));
    else {
      const list = element("ul", "notes");
      for (const [seed, described, summary, task, level] of notes) {
        const item = element("li", described ? "" : "undescribed");
        item.appendChild(element("strong", "", "seed " + seed + ": "));
        item.appendChild(document.createTextNode(summary || "(empty answer)"));
        if (described) {
          item.appendChild(element("span", "label", " · task: " + (task || "?") + " · level: " + (level || "?")));
        }
        list.appendChild(item);
      }
      cell.appendChild(list);
    }
    tr.appendChild(cell);
  }

  const COLUMNS = {
    attention: ["Layer", "Head", "Dim", "Rank", "Score", "Word pairs (key = query)"],
    ffn: ["Layer", "Rank", "Score", "Words", "Annotations (per seed: summary · task · level)"],
  };

  function pane(kind, m, set, pageRows, key) {
    const model = manifest.models[m];
    const section = element("section", "pane");
    section.dataset.model = String(m);
    section.appendChild(element("h2", "", model.id + " (" + model.role + ")"));
    const what = counted(set.count, KINDS[kind]) + (key ? " with \u201c" + key + "\u201d" : "");
    section.appendChild(element("p", "count", what));
    if (set.groups && set.groups.length) {
      const shown = set.groups.slice(0, 12).map(([layer, head, n]) => "L" + layer + " H" + head + " \u00d7" + n);
      const more = set.groups.length > 12 ? ", \u2026" : "";
      const where = "in " + counted(set.groups.length, "heads") + ": " + shown.join(", ") + more;
      section.appendChild(element("p", "heads", where));
    }
    const tableNode = element("table");
    const head = element("tr");
    for (const c of COLUMNS[kind]) head.appendChild(element("th", "", c));
    tableNode.appendChild(element("thead")).appendChild(head);
    const body = tableNode.appendChild(element("tbody"));
    for (const [layer, record] of pageRows) {
      const tr = element("tr", "row");
      tr.dataset.layer = String(layer);
      if (kind === "attention") {
        tr.dataset.head = String(record[0]);
        headRow(tr, layer, record, key);
      } else componentRow(tr, layer, record, key);
      body.appendChild(tr);
    }
    section.appendChild(tableNode);
    return section;
  }

  async function render() {
    const mine = ++token;
    const kind = state.kind;
    const key = state.word.trim().toLowerCase();
    const models = state.view === "both" ? manifest.models.map((_, m) => m) : [Number(state.view)];
    const size = manifest.page_size;
    status("Loading…", "loading");
    try {
      let sets;
      if (key) {
        const found = await postings(kind, key);
        sets = models.map((m) => {
          const t = table(kind, m);
          const ids = found[m].filter((id) => selected(groupOf(t, id)));
          return idSet(ids, kind === "attention" ? heads(ids, t) : null);
        });
      } else {
        sets = models.map((m) => rangeSet(table(kind, m).groups.filter(selected)));
      }
      const pages = Math.max(1, ...sets.map((s) => Math.ceil(s.count / size)));
      state.page = Math.min(Math.max(0, state.page), pages - 1);
      saveState();
      const pageRows = await Promise.all(
        models.map((m, i) => rows(kind, m, sets[i].slice(state.page * size, (state.page + 1) * size))));
      if (mine !== token) return;
      const panes = $("panes");
      panes.replaceChildren(...models.map((m, i) => pane(kind, m, sets[i], pageRows[i], key)));
      $("page-label").textContent = "page " + (state.page + 1) + " of " + pages;
      $("prev").disabled = state.page === 0;
      $("next").disabled = state.page >= pages - 1;
      const total = sets.reduce((n, s) => n + s.count, 0);
      const none = "no " + KINDS[kind] + " hold the word \u201c" + key + "\u201d (the search matches whole words)";
      status(key && !total ? none : counted(total, KINDS[kind]) + ", " + size + " per page", "ready");
    } catch (error) {
      if (mine !== token) return;
      status(String(error.message || error), "error");
      console.error(error);
    }
  }

  // --- controls --------------------------------------------------------------------------------------

  function options(select, values, label) {
    const keep = select.value;
    select.replaceChildren(element("option", "", "all"));
    select.firstChild.value = "";
    for (const v of values) {
      const option = element("option", "", label(v));
      option.value = String(v);
      select.appendChild(option);
    }
    select.value = values.map(String).includes(keep) ? keep : "";
  }

  function kindChanged() {
    for (const k of Object.keys(KINDS)) $("tab-" + k).setAttribute("aria-selected", String(k === state.kind));
    const groups = manifest.kinds[state.kind].groups.flat();
    options($("layer"), [...new Set(groups.map(([layer]) => layer))].sort((a, b) => a - b), String);
    options($("head"), [...new Set(groups.map(([, head]) => head))].sort((a, b) => a - b), String);
    $("layer").value = state.layer;
    $("head").value = state.head;
    state.layer = $("layer").value;
    state.head = $("head").value;
    $("head-filter").hidden = state.kind !== "attention";
  }

  let suggestionTimer = null;
  async function suggest() {
    const prefix = $("word").value.trim().toLowerCase();
    const list = $("word-suggestions");
    if (!prefix) { list.replaceChildren(); return; }
    const words = await load("words-" + state.kind);
    // A scan, not a binary search: Python sorted the words by code point, JS compares UTF-16 units.
    const found = [];
    for (let i = 0; i < words.length && found.length < 20; i++) {
      if (words[i][0].startsWith(prefix)) found.push(words[i]);
    }
    list.replaceChildren(...found.map(([w, n]) => {
      const option = element("option", "", n + " rows");
      option.value = w;
      return option;
    }));
  }

  function search() {
    state.word = $("word").value;
    state.page = 0;
    render();
  }

  function saveState() {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v !== "" && v !== 0) params.set(k, String(v));
    history.replaceState(null, "", "#" + params.toString());
  }

  function restoreState() {
    const params = new URLSearchParams(location.hash.slice(1));
    const kind = params.get("kind");
    state.kind = Object.prototype.hasOwnProperty.call(KINDS, kind) ? kind : "attention";
    const view = params.get("view");
    state.view = view !== null && /^[0-9]+$/.test(view) && manifest.models[Number(view)] ? view : "both";
    state.layer = params.get("layer") || "";
    state.head = params.get("head") || "";
    state.word = params.get("word") || "";
    state.page = Math.max(0, Number(params.get("page")) || 0);
  }

  function start() {
    if (!manifest) {
      status("data/manifest.js did not load: open index.html inside its browser folder.", "error");
      return;
    }
    $("title").textContent = "Explanation browser: " + manifest.pair;
    document.title = "shiftlens: " + manifest.pair;
    const view = $("view");
    const both = element("option", "", "side by side");
    both.value = "both";
    view.appendChild(both);
    manifest.models.forEach((model, m) => {
      const option = element("option", "", model.id + " (" + model.role + ")");
      option.value = String(m);
      view.appendChild(option);
    });
    const restore = () => {
      restoreState();
      view.value = state.view;
      $("word").value = state.word;
      kindChanged();
    };
    restore();
    window.addEventListener("hashchange", () => { restore(); render(); });  // an address edited by hand
    for (const k of Object.keys(KINDS)) {
      $("tab-" + k).addEventListener("click", () => {
        state.kind = k;
        state.page = 0;
        kindChanged();
        render();
      });
    }
    view.addEventListener("change", () => { state.view = view.value; render(); });
    $("layer").addEventListener("change", () => { state.layer = $("layer").value; state.page = 0; render(); });
    $("head").addEventListener("change", () => { state.head = $("head").value; state.page = 0; render(); });
    $("word").addEventListener("keydown", (event) => { if (event.key === "Enter") search(); });
    $("word").addEventListener("input", (event) => {
      if (!event.inputType || event.inputType === "insertReplacementText") { search(); return; }  // a suggestion
      clearTimeout(suggestionTimer);
      suggestionTimer = setTimeout(() => suggest().catch((e) => status(String(e.message || e), "error")), 150);
    });
    $("search").addEventListener("click", search);
    $("clear").addEventListener("click", () => {
      $("word").value = "";
      Object.assign(state, { word: "", layer: "", head: "", page: 0 });
      $("layer").value = "";
      $("head").value = "";
      render();
    });
    $("prev").addEventListener("click", () => { state.page -= 1; render(); });
    $("next").addEventListener("click", () => { state.page += 1; render(); });
    render();
  }

  start();
})();
