// Browse page: query posts with tag autocomplete, and look at a built dataset's samples.
// Plain JS, no build step. Everything comes from the JSON API of the same server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const api = async (path) => {
  const res = await fetch(path);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
};
const el = (tag, attrs = {}, text = "") => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
};

// ---- tag autocomplete on the word under the cursor ------------------------------------------
let suggestTimer = null;
let active = -1;
function currentWord(input) {
  const upto = input.value.slice(0, input.selectionStart);
  const start = upto.search(/\S*$/);
  return { start, word: upto.slice(start).replace(/^-/, "") };
}
async function suggest() {
  const input = $("#q"), list = $("#suggestions");
  const { word } = currentWord(input);
  list.replaceChildren();
  active = -1;
  if (!word || word.includes(":")) return;
  const { tags } = await api(`/tags?prefix=${encodeURIComponent(word)}&limit=10`);
  for (const t of tags) {
    const li = el("li", { role: "option", "data-name": t.name, class: `cat-${t.category}` });
    li.append(el("span", {}, t.alias ? `${t.alias} → ${t.name}` : t.name), el("small", {}, String(t.popularity)));
    li.addEventListener("mousedown", (e) => { e.preventDefault(); accept(t.name); });
    list.append(li);
  }
}
function accept(name) {
  const input = $("#q");
  const { start } = currentWord(input);
  const neg = input.value[start] === "-" ? "-" : "";
  const rest = input.value.slice(input.selectionStart);
  input.value = input.value.slice(0, start) + neg + name + " " + rest.trimStart();
  $("#suggestions").replaceChildren();
  input.focus();
}
function onKey(e) {
  const items = [...$("#suggestions").children];
  if (!items.length) return;
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    active = (active + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
    items.forEach((li, i) => li.classList.toggle("active", i === active));
  } else if ((e.key === "Enter" || e.key === "Tab") && active >= 0) {
    e.preventDefault();
    accept(items[active].dataset.name);
  } else if (e.key === "Escape") {
    $("#suggestions").replaceChildren();
  }
}

// ---- post search: a grid of thumbnails --------------------------------------------------------
// Each thumbnail is <img> on /posts/ID/thumb (WebP, or an SVG placeholder saying why there is no
// picture). Once loaded the <img> carries data-width (its naturalWidth; the browse test reads it).
let nextCursor = null;
function markLoaded(img) {
  const mark = () => { img.dataset.width = String(img.naturalWidth); };
  if (img.complete && img.naturalWidth) mark(); else img.addEventListener("load", mark);
  img.addEventListener("error", () => { img.dataset.width = "0"; img.classList.add("broken"); });
}
function thumbTile(src, label, title, onOpen) {
  const tile = el("button", { type: "button", class: "tile", title });
  const img = el("img", { src, alt: title, loading: "lazy", width: "180", height: "180" });
  markLoaded(img);
  tile.append(img, el("span", { class: "tile-label" }, label));
  tile.addEventListener("click", onOpen);
  return tile;
}
async function search(e, more = false) {
  if (e) e.preventDefault();
  const q = $("#q").value.trim();
  const grid = $("#posts"), error = $("#posts-error");
  if (!more) { grid.replaceChildren(); nextCursor = null; }
  $("#results").hidden = false;
  error.hidden = true;
  try {
    const cursor = more && nextCursor !== null ? `&cursor=${nextCursor}` : "";
    const page = await api(`/posts?q=${encodeURIComponent(q)}&limit=60${cursor}`);
    for (const p of page.posts) {
      const label = `#${p.id} · ${"gsqe"[p.rating]} · ★${p.score}`;
      const title = `post ${p.id}, ${p.image_width}×${p.image_height}, ${p.created_at.slice(0, 10)}`;
      const tile = thumbTile(`/posts/${p.id}/thumb`, label, title, () => openPost(p.id));
      tile.dataset.id = String(p.id);
      grid.append(tile);
    }
    nextCursor = page.next_cursor;
    $("#more").hidden = nextCursor === null;
    $("#results-count").textContent = `${grid.children.length} shown${nextCursor === null ? "" : ", more below"}`;
  } catch (err) {
    $("#results-count").textContent = "";
    error.textContent = err.message;
    error.hidden = false;
  }
}

// ---- detail view: picture, caption, tags by category, bands, metadata ------------------------
function tagList(tags) {
  const box = $("#detail-tags");
  box.replaceChildren();
  for (const [category, names] of Object.entries(tags)) {
    if (!names.length) continue;
    const row = el("p", { class: "tags", "data-category": category });
    row.append(el("strong", {}, `${category}: `));
    names.forEach((n, i) => {
      const a = el("a", { href: `/?q=${encodeURIComponent(n)}`, class: `cat-${category}` }, n);
      row.append(a, i + 1 < names.length ? ", " : "");
    });
    box.append(row);
  }
}
function metaList(pairs) {
  const dl = $("#detail-meta");
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  }
}
function showDetail(title, imgSrc, jsonHref) {
  const img = $("#detail-img");
  delete img.dataset.width;
  img.classList.remove("broken");
  img.src = imgSrc;
  markLoaded(img);
  $("#detail-title").textContent = title;
  $("#detail-json").href = jsonHref;
  for (const id of ["#detail-bands", "#detail-caption", "#detail-tags", "#detail-meta"]) $(id).replaceChildren();
  $("#detail-caption").textContent = "loading…";
  const dialog = $("#detail");
  if (!dialog.open) dialog.showModal();
}
async function openPost(id) {
  showDetail(`Post ${id}`, `/posts/${id}/thumb?size=1024`, `/posts/${id}`);
  try {
    const [post, cap] = await Promise.all([api(`/posts/${id}`), api(`/posts/${id}/caption`)]);
    $("#detail-caption").textContent = cap.caption;
    $("#detail-bands").textContent = [cap.quality, cap.year_tag, cap.rating_tag].filter(Boolean).join(" · ");
    tagList(post.tags);
    metaList([["score", post.score], ["favs", post.fav_count], ["size", `${post.image_width}×${post.image_height}`],
      ["file", `${post.file_ext}, ${post.file_size} bytes`], ["created", post.created_at], ["md5", post.md5],
      ["source", post.source]]);
  } catch (err) {
    $("#detail-caption").textContent = err.message;
  }
}
async function openSample(name, key) {
  const base = `/datasets/${encodeURIComponent(name)}/samples/${encodeURIComponent(key)}`;
  showDetail(`${name} · sample ${key}`, `${base}/thumb?size=1024`, `${base}.json`);
  try {
    const sample = await api(`${base}.json`);
    const m = sample.manifest;
    $("#detail-caption").textContent = sample.caption;
    $("#detail-bands").textContent = [m.quality, m.year, m.rating].filter((v) => v !== null && v !== undefined).join(" · ");
    metaList([["bucket", m.bucket], ["stored size", m.width && `${m.width}×${m.height}`], ["shard", m.shard], ["sha256", m.sha256]]);
    if (/^\d+$/.test(key)) {  // kdata keys samples by post id: the DB has its tags
      api(`/posts/${key}`).then((post) => tagList(post.tags)).catch(() => {});
    }
  } catch (err) {
    $("#detail-caption").textContent = err.message;
  }
}

// ---- dataset grid and histograms -------------------------------------------------------------
function histogram(target, rows) {
  const box = $(target);
  box.replaceChildren();
  const max = Math.max(1, ...rows.map((r) => r.count));
  for (const r of rows.slice(0, 20)) {
    const bar = el("div", { class: "bar" });
    const fill = el("div", { style: `width:${Math.round((200 * r.count) / max)}px` });
    bar.append(el("span", {}, String(r.value)), fill, el("span", {}, String(r.count)));
    box.append(bar);
  }
}
// The card's HTML comes from the server (markdown rendered without raw HTML). Each picture marks
// what it loaded as: data-width (its naturalWidth; the browse test reads it) or a visible error.
async function showCard(name) {
  const box = $("#card");
  try {
    const card = await api(`/datasets/${encodeURIComponent(name)}/card`);
    box.innerHTML = card.html;
    for (const img of box.querySelectorAll("img")) {
      const mark = () => { img.dataset.width = String(img.naturalWidth); };
      if (img.complete && img.naturalWidth) mark(); else img.addEventListener("load", mark);
      img.addEventListener("error", () => img.replaceWith(el("p", { class: "error" }, `picture missing: ${img.getAttribute("src")}`)));
    }
  } catch (err) {
    box.replaceChildren(el("p", { class: "muted" }, err.message));
  }
}
// The card sits closed below the samples: it is fetched the first time it is opened.
function cardOnOpen(name) {
  const section = $("#card-section");
  $("#card").replaceChildren();
  section.dataset.loaded = "";
  if (section.open) { section.dataset.loaded = name; showCard(name); }
  section.ontoggle = () => {
    if (section.open && section.dataset.loaded !== name) { section.dataset.loaded = name; showCard(name); }
  };
}
async function showDataset(name) {
  cardOnOpen(name);
  const grid = $("#grid");
  grid.replaceChildren();
  $("#status").textContent = "loading…";
  try {
    const [page, hist] = await Promise.all([
      api(`/datasets/${encodeURIComponent(name)}/samples?limit=60`),
      api(`/datasets/${encodeURIComponent(name)}/histograms`),
    ]);
    histogram("#hist-bucket", hist.bucket || []);
    histogram("#hist-quality", hist.quality || []);
    for (const s of page.samples) {
      const card = el("div", { class: "card", "data-key": s.key });
      const src = `/datasets/${encodeURIComponent(name)}/samples/${encodeURIComponent(s.key)}/thumb`;
      const tile = thumbTile(src, [s.quality, s.year].filter((v) => v !== null && v !== undefined).join(" · "),
        `sample ${s.key}`, () => openSample(name, String(s.key)));
      card.append(tile, el("p", { class: "caption" }, s.caption || ""));
      grid.append(card);
    }
    $("#dataset-info").textContent = `${page.total} samples`;
    $("#status").textContent = page.total > page.samples.length ? `first ${page.samples.length} shown` : "";
  } catch (err) {
    $("#status").textContent = err.message;
    $("#status").className = "error";
  }
}
async function loadDatasets() {
  const { datasets } = await api("/datasets");
  const select = $("#dataset");
  for (const d of datasets) select.append(el("option", { value: d.name }, d.name));
  if (!datasets.length) {
    $("#status").textContent = "no built datasets: kdata serve --datasets DIR serves the folders in DIR that hold index.json (kdata build --out DIR/NAME-VERSION)";
    return;
  }
  const wanted = new URLSearchParams(location.search).get("dataset");
  select.value = datasets.some((d) => d.name === wanted) ? wanted : datasets[0].name;
  select.addEventListener("change", () => showDataset(select.value));
  await showDataset(select.value);
}

$("#search").addEventListener("submit", search);
$("#more").addEventListener("click", () => search(null, true));
$("#q").addEventListener("input", () => { clearTimeout(suggestTimer); suggestTimer = setTimeout(suggest, 120); });
$("#q").addEventListener("keydown", onKey);
$("#detail").addEventListener("click", (e) => { if (e.target === $("#detail")) $("#detail").close(); });  // backdrop
$("#q").addEventListener("blur", () => setTimeout(() => $("#suggestions").replaceChildren(), 150));
const initialQuery = new URLSearchParams(location.search).get("q");
if (initialQuery !== null) { $("#q").value = initialQuery; search(null); }
const initialPost = new URLSearchParams(location.search).get("post");
if (initialPost !== null && /^\d+$/.test(initialPost)) openPost(Number(initialPost));
loadDatasets();
