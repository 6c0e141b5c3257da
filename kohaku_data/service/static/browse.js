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

// ---- post search ----------------------------------------------------------------------------
let nextCursor = null;
async function search(e, more = false) {
  if (e) e.preventDefault();
  const q = $("#q").value.trim();
  const tbody = $("#posts tbody");
  if (!more) { tbody.replaceChildren(); nextCursor = null; }
  $("#results").hidden = false;
  try {
    const cursor = more && nextCursor !== null ? `&cursor=${nextCursor}` : "";
    const page = await api(`/posts?q=${encodeURIComponent(q)}&limit=50${cursor}`);
    for (const p of page.posts) {
      const tr = el("tr");
      const link = el("a", { href: `/posts/${p.id}` }, String(p.id));
      const td = el("td"); td.append(link); tr.append(td);
      for (const v of ["gsqe"[p.rating], p.score, p.fav_count, `${p.image_width}×${p.image_height}`, p.created_at.slice(0, 10)]) {
        tr.append(el("td", {}, String(v)));
      }
      tbody.append(tr);
    }
    nextCursor = page.next_cursor;
    $("#more").hidden = nextCursor === null;
    $("#results-count").textContent = `${tbody.children.length} shown`;
  } catch (err) {
    $("#results-count").textContent = "";
    tbody.replaceChildren(el("tr", { class: "error" }, err.message));
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
async function showDataset(name) {
  showCard(name);
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
      const src = `/datasets/${encodeURIComponent(name)}/samples/${encodeURIComponent(s.key)}`;
      card.append(el("img", { src, alt: s.key, loading: "lazy" }), el("p", { class: "caption" }, s.caption || ""));
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
  if (!datasets.length) { $("#status").textContent = "no built datasets (kdata build ... --out DATASETS/NAME-VERSION)"; return; }
  const wanted = new URLSearchParams(location.search).get("dataset");
  select.value = datasets.some((d) => d.name === wanted) ? wanted : datasets[0].name;
  select.addEventListener("change", () => showDataset(select.value));
  await showDataset(select.value);
}

$("#search").addEventListener("submit", search);
$("#more").addEventListener("click", () => search(null, true));
$("#q").addEventListener("input", () => { clearTimeout(suggestTimer); suggestTimer = setTimeout(suggest, 120); });
$("#q").addEventListener("keydown", onKey);
$("#q").addEventListener("blur", () => setTimeout(() => $("#suggestions").replaceChildren(), 150));
const initialQuery = new URLSearchParams(location.search).get("q");
if (initialQuery !== null) { $("#q").value = initialQuery; search(null); }
loadDatasets();
