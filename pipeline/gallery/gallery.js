// sdbatch gallery: renders the JSON in #sdbatch-data. Vanilla JS, no network, works from file://.
// Every value from the data is untrusted text: it is set with textContent, .value or DOM
// properties, never parsed as HTML.
(function () {
  "use strict";

  var CHUNK = 240;
  var data = JSON.parse(document.getElementById("sdbatch-data").textContent);
  var items = data.items || [];
  var axes = data.axes || [];
  var $ = function (id) { return document.getElementById(id); };
  var state = { q: "", sort: "job", kind: "all", filters: axes.map(function () { return -1; }) };
  var visible = [];
  var shown = 0;
  var current = -1;

  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      if (key === "text") node.textContent = props[key];
      else if (key === "dataset") Object.assign(node.dataset, props[key]);
      else node[key] = props[key];
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function str(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // --- header --------------------------------------------------------------------------------

  function header() {
    $("title").textContent = data.title || "sdbatch";
    var counts = data.counts || {};
    var parts = [items.length + " image" + (items.length === 1 ? "" : "s")];
    if (data.status) parts.push("run " + data.status);
    if (counts.total) {
      var done = (counts.done || 0) + (counts.skipped || 0);
      parts.push(done + " of " + counts.total + " variants done" +
                 (counts.skipped ? " (" + counts.skipped + " before this run)" : ""));
    }
    if ((data.failures || []).length) parts.push(data.failures.length + " failed");
    parts.push("page written " + data.updated + (data.status === "running" ? " (reload for new images)" : ""));
    $("run").textContent = parts.join(" · ");
    var grids = data.grids || [];
    var views = data.views || [];
    if (!grids.length) return;
    $("grids").hidden = false;
    $("grids").open = grids.length <= 4;
    $("grids-summary").textContent = "Grid sheets (" + grids.length + ")";
    views.forEach(function (view) {
      var name = view.name ? "view " + view.name : (view.auto ? "default sheets" : "job sheets");
      var axes = "columns " + view.x + (view.y ? ", rows " + view.y : "") + (view.page ? ", one sheet per " + view.page : "");
      var held = Object.keys(view.where || {}).map(function (k) { return k + "=" + view.where[k]; }).join(", ");
      var list = el("ul", {});
      view.sheets.forEach(function (n) {
        var g = grids[n];
        var text = (g.page || g.title || g.file) + (g.parts > 1 ? " (part " + g.part + "/" + g.parts + ")" : "");
        var note = g.cells ? " · " + g.done + "/" + g.cells + (g.failed ? ", " + g.failed + " failed" : "") : "";
        list.appendChild(el("li", {}, [
          el("a", { href: g.file, target: "_blank", rel: "noopener", title: text }, [
            el("img", { src: g.file, alt: "", loading: "lazy", decoding: "async" }),
            el("span", { text: text + note })
          ])
        ]));
      });
      $("grid-list").appendChild(el("div", { className: "view" }, [
        el("h3", { text: name + " — " + axes + (held ? " — holding " + held : "") }), list
      ]));
    });
  }

  // --- controls ------------------------------------------------------------------------------

  function controls() {
    axes.forEach(function (axis, i) {
      var select = el("select", { id: "filter-" + i, dataset: { axis: axis.name, index: String(i) } },
        [el("option", { value: "-1", text: "all" })]);
      axis.values.forEach(function (label, v) {
        select.appendChild(el("option", { value: String(v), text: label }));
      });
      select.addEventListener("change", function () {
        state.filters[i] = parseInt(select.value, 10);
        update();
      });
      $("filters").appendChild(el("label", { title: axis.name }, [document.createTextNode(axis.title + " "), select]));
    });
    if (items.some(function (it) { return it.kind !== "generation"; })) {
      var kind = el("select", { id: "filter-kind", dataset: { axis: "kind" } }, [
        el("option", { value: "all", text: "all" }),
        el("option", { value: "generation", text: "generations" }),
        el("option", { value: "extra", text: "extras" })
      ]);
      kind.addEventListener("change", function () { state.kind = kind.value; update(); });
      $("filters").appendChild(el("label", {}, [document.createTextNode("kind "), kind]));
    }
    var sort = $("sort");
    [["job", "job order"], ["newest", "newest first"], ["seed", "seed"]].forEach(function (o) {
      sort.appendChild(el("option", { value: o[0], text: o[1] }));
    });
    axes.forEach(function (axis, i) {
      sort.appendChild(el("option", { value: "axis:" + i, text: "by " + axis.title }));
    });
    sort.addEventListener("change", function () { state.sort = sort.value; update(); });
    var search = $("search");
    var timer = null;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.q = search.value.trim().toLowerCase(); update(); }, 120);
    });
    $("controls").addEventListener("submit", function (e) { e.preventDefault(); });
    $("size").addEventListener("input", function () {
      document.documentElement.style.setProperty("--thumb", $("size").value + "px");
    });
    $("reset").addEventListener("click", function () {
      state = { q: "", sort: "job", kind: "all", filters: axes.map(function () { return -1; }) };
      syncControls();
      update();
    });
    $("more-button").addEventListener("click", function () { renderMore(); });
    if ("IntersectionObserver" in window) {
      new IntersectionObserver(function (entries) {
        if (entries.some(function (e) { return e.isIntersecting; })) renderMore();
      }, { rootMargin: "600px" }).observe($("more"));
    }
  }

  function syncControls() {
    $("search").value = state.q;
    $("sort").value = state.sort;
    axes.forEach(function (_, i) { $("filter-" + i).value = String(state.filters[i]); });
    if ($("filter-kind")) $("filter-kind").value = state.kind;
  }

  // --- state in the URL hash, so a reload (the page is rewritten as images land) keeps it ---

  function saveHash() {
    var params = new URLSearchParams();
    if (state.q) params.set("q", state.q);
    if (state.sort !== "job") params.set("sort", state.sort);
    if (state.kind !== "all") params.set("kind", state.kind);
    axes.forEach(function (axis, i) {
      if (state.filters[i] >= 0) params.set("a." + axis.name, axis.values[state.filters[i]]);
    });
    if (typeof grid !== "undefined" && axes.length) {
      params.set("tab", tab);
      [["x", grid.x], ["x2", grid.x2], ["y", grid.y], ["y2", grid.y2]].forEach(function (p) {
        if (p[1] !== NONE) params.set("g" + p[0], axes[p[1]].name);
      });
      axes.forEach(function (axis, i) {
        if (!placed(i)) params.set("h." + axis.name, grid.holds[i] === ANY ? "*" : axis.values[grid.holds[i]]);
      });
    }
    var text = params.toString();
    if (("#" + text) !== location.hash && !(text === "" && location.hash === "")) {
      history.replaceState(null, "", text ? "#" + text : location.pathname + location.search);
    }
  }

  function loadHash() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.q = (params.get("q") || "").toLowerCase();
    state.sort = params.get("sort") || "job";
    state.kind = params.get("kind") || "all";
    axes.forEach(function (axis, i) {
      var wanted = params.get("a." + axis.name);
      state.filters[i] = wanted === null ? -1 : axis.values.indexOf(wanted);
    });
    if (!Array.prototype.some.call($("sort").options, function (o) { return o.value === state.sort; })) {
      state.sort = "job";
    }
    if (params.get("tab")) tab = params.get("tab");
    if (params.get("gx") !== null) {
      ["x", "x2", "y", "y2"].forEach(function (k) {
        var name = params.get("g" + k);
        grid[k] = name === null ? NONE : axisIndex(name);
      });
      if (grid.x === NONE) defaultAxes();
    }
    axes.forEach(function (axis, i) {
      var wanted = params.get("h." + axis.name);
      if (wanted === null) return;
      grid.holds[i] = wanted === "*" ? ANY : Math.max(ANY, axis.values.indexOf(wanted));
    });
  }

  // --- the list ------------------------------------------------------------------------------

  function matches(item) {
    if (state.kind !== "all" && item.kind !== state.kind) return false;
    for (var i = 0; i < axes.length; i++) {
      if (state.filters[i] >= 0 && item.v[i] !== state.filters[i]) return false;
    }
    return !state.q || item.prompt.toLowerCase().indexOf(state.q) >= 0;
  }

  function compare(a, b) {
    var s = state.sort;
    if (s === "newest") return b.pos - a.pos;
    if (s === "seed") return num(a.seed) - num(b.seed) || a.pos - b.pos;
    if (s.indexOf("axis:") === 0) {
      var i = parseInt(s.slice(5), 10);
      return a.v[i] - b.v[i] || jobOrder(a, b);
    }
    return jobOrder(a, b);
  }

  function jobOrder(a, b) { return num(a.ordinal) - num(b.ordinal) || a.index - b.index || a.pos - b.pos; }
  function num(v) { return typeof v === "number" ? v : Number.MAX_SAFE_INTEGER; }

  // Axes a thumbnail caption shows: not the prompt (it is the tooltip), not what "lora" says.
  var hasLora = axes.some(function (a) { return a.name === "lora"; });
  var captionAxes = axes.map(function (axis) {
    var n = axis.name;
    return !(n === "prompt" || n === "template" || (hasLora && (n === "lora_name" || n === "lora_weight")));
  });

  function caption(item) {
    var bits = [];
    axes.forEach(function (axis, i) {
      if (item.v[i] >= 0 && captionAxes[i]) bits.push(axis.values[item.v[i]]);
    });
    if (item.seed !== null && item.seed !== undefined && bits.join(" ").indexOf("seed") < 0) bits.push("seed " + item.seed);
    return bits.join(" · ");
  }

  function update() {
    visible = items.filter(matches).sort(compare);
    $("thumbs").textContent = "";
    shown = 0;
    renderMore();
    saveHash();
  }

  function renderMore() {
    var end = Math.min(visible.length, shown + CHUNK);
    var frag = document.createDocumentFragment();
    for (var n = shown; n < end; n++) {
      var item = visible[n];
      var img = el("img", { src: item.file, alt: item.prompt.slice(0, 200), loading: "lazy", decoding: "async" });
      var cap = caption(item);
      var link = el("a", { className: "thumb" + (item.kind !== "generation" ? " extra" : ""), href: item.file,
                           title: item.prompt.slice(0, 500), dataset: { n: String(n) } },
                    [img, el("span", { className: "cap", text: cap || item.name })]);
      frag.appendChild(link);
    }
    $("thumbs").appendChild(frag);
    shown = end;
    $("more").hidden = shown >= visible.length;
    var total = items.length;
    $("status").textContent = visible.length === total
      ? "Showing " + total + " image" + (total === 1 ? "" : "s")
      : "Showing " + visible.length + " of " + total + " images";
    $("status").dataset.visible = String(visible.length);
  }

  // --- the viewer ----------------------------------------------------------------------------

  function open(n) {
    if (n < 0 || n >= visible.length) return;
    current = n;
    var item = visible[n];
    $("viewer-img").src = item.file;
    $("viewer-img").alt = item.prompt.slice(0, 200);
    $("viewer-open").href = item.file;
    $("viewer-name").textContent = item.name;
    $("viewer-prompt").textContent = item.prompt;
    $("viewer-negative").textContent = item.negative || "(none)";
    var facts = $("viewer-facts");
    facts.textContent = "";
    var add = function (k, v) {
      if (v === null || v === undefined || v === "") return;
      facts.appendChild(el("dt", { text: k }));
      facts.appendChild(el("dd", { text: str(v) }));
    };
    axes.forEach(function (axis, i) {
      if (item.v[i] >= 0 && captionAxes[i] && axis.name !== "seed") add(axis.title, axis.values[item.v[i]]);
    });
    add("seed", item.seed);
    if (item.requested_seed !== item.seed) add("requested seed", item.requested_seed);
    add("model", item.model);
    add("sampler", item.sampler);
    if (item.params && item.params.width) add("size", item.params.width + "×" + item.params.height);
    if (item.params) { add("steps", item.params.steps); add("CFG scale", item.params.cfg_scale); }
    add("backend", item.backend);
    add("created", item.created);
    add("attempts", item.attempts);
    add("variant id", item.id);
    $("viewer-infotext").value = item.infotext || "";
    $("viewer-params").textContent = JSON.stringify({ axes: item.axes, params: item.params }, null, 2);
    $("copied").textContent = "";
    $("viewer").hidden = false;
    $("close").focus();
  }

  function close() {
    $("viewer").hidden = true;
    $("viewer-img").removeAttribute("src");
    var link = $("thumbs").querySelector('[data-n="' + current + '"]');
    if (link) link.focus();
    current = -1;
  }

  function copyInfotext() {
    var text = $("viewer-infotext").value;
    var done = function () { $("copied").textContent = "copied"; };
    var fallback = function () {
      $("viewer-infotext").select();
      try { document.execCommand("copy"); done(); } catch (e) { $("copied").textContent = "select and copy"; }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  }

  function viewer() {
    $("thumbs").addEventListener("click", function (e) {
      var link = e.target.closest ? e.target.closest("a.thumb") : null;
      if (!link || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
      e.preventDefault();
      open(parseInt(link.dataset.n, 10));
    });
    $("close").addEventListener("click", close);
    $("prev").addEventListener("click", function () { open(current - 1); });
    $("next").addEventListener("click", function () { open(current + 1); });
    $("copy").addEventListener("click", copyInfotext);
    $("viewer").addEventListener("click", function (e) {
      if (e.target === $("viewer") || e.target.className === "viewer-image") close();
    });
    document.addEventListener("keydown", function (e) {
      if ($("viewer").hidden) return;
      if (e.key === "Escape") close();
      else if (e.key === "ArrowLeft") open(current - 1);
      else if (e.key === "ArrowRight") open(current + 1);
    });
  }

  function failures() {
    var list = data.failures || [];
    if (!list.length) return;
    $("failures").hidden = false;
    $("failures-summary").textContent = list.length + " variant" + (list.length === 1 ? "" : "s") + " failed";
    list.forEach(function (f) {
      $("failure-list").appendChild(el("li", {}, [
        el("div", { className: "error", text: f.error }),
        el("div", { text: f.prompt }),
        el("div", { className: "muted", text: "seed " + str(f.seed) + " · " + str(f.attempts) + " attempt(s) · " + str(f.backend) + " · " + f.id })
      ]));
    });
  }

  // --- the grid explorer: X and Y axes picked in the page, the other axes held --------------

  var NONE = -1;
  var ANY = -1;
  var grid = { x: NONE, x2: NONE, y: NONE, y2: NONE, holds: axes.map(function () { return ANY; }) };
  var pinned = [];  // items in the compare tray
  var gridOrder = [];  // the items shown, row by row, for the viewer's prev/next

  function axisIndex(name) {
    for (var i = 0; i < axes.length; i++) if (axes[i].name === name) return i;
    return NONE;
  }

  function defaultHolds() {
    // the first value; for a LoRA name the first LoRA (its baseline shows under every one)
    grid.holds = axes.map(function (a) { return a.any ? ANY : (a.baseline === 0 && a.values.length > 1 ? 1 : 0); });
  }

  function defaultAxes() {
    // the job's own view first: "prompt+seed" on rows is rows prompt, then seed
    var view = (data.views || [])[0];
    var pick = function (name) {
      var parts = (name || "").split("+").map(axisIndex).filter(function (i) { return i >= 0; });
      return [parts.length ? parts[0] : NONE, parts.length > 1 ? parts[1] : NONE];
    };
    var x = view ? pick(view.x) : [NONE, NONE];
    var y = view ? pick(view.y) : [NONE, NONE];
    var free = axes.map(function (_, i) { return i; }).filter(function (i) { return !axes[i].any; });
    var rowsFirst = free.filter(function (i) { return axes[i].name === "prompt" || axes[i].name === "seed"; });
    var colsFirst = free.filter(function (i) { return rowsFirst.indexOf(i) < 0; });
    if (x[0] === NONE) x = [colsFirst.length ? colsFirst[0] : (rowsFirst.length > 1 ? rowsFirst[1] : NONE), NONE];
    if (y[0] === NONE) {
      var rest = rowsFirst.concat(colsFirst).filter(function (i) { return i !== x[0]; });
      y = [rest.length ? rest[0] : NONE, NONE];
    }
    grid.x = x[0]; grid.x2 = x[1]; grid.y = y[0]; grid.y2 = y[1];
    defaultHolds();
  }

  function placed(i) { return i === grid.x || i === grid.x2 || i === grid.y || i === grid.y2; }

  // Axes that follow from one another: LoRA and its name and weight, a zip group and its
  // keys, the prompt and its template. With one of them on the grid, the others are not held.
  var links = axes.map(function (axis) {
    var n = axis.name, out = [];
    axes.forEach(function (other, j) {
      var m = other.name;
      if (m === n) return;
      if ((n === "lora" && (m === "lora_name" || m === "lora_weight")) ||
          (m === "lora" && (n === "lora_name" || n === "lora_weight")) ||
          (n === "prompt" && m === "template") || (m === "prompt" && n === "template") ||
          (n.indexOf("+") > 0 && n.split("+").indexOf(m) >= 0) ||
          (m.indexOf("+") > 0 && m.split("+").indexOf(n) >= 0)) out.push(j);
    });
    return out;
  });

  function follows(i) {
    return links[i].some(function (j) { return placed(j); });
  }

  function fillAxisSelect(select, value, allowNone) {
    select.textContent = "";
    if (allowNone) select.appendChild(el("option", { value: "-1", text: "—" }));
    axes.forEach(function (axis, i) {
      select.appendChild(el("option", { value: String(i), text: axis.title }));
    });
    select.value = String(value);
  }

  function explorerControls() {
    ["gx", "gx2", "gy", "gy2"].forEach(function (id) {
      $(id).addEventListener("change", function () {
        var key = id.slice(1);
        var value = parseInt($(id).value, 10);
        ["x", "x2", "y", "y2"].forEach(function (k) { if (k !== key && grid[k] === value) grid[k] = NONE; });
        grid[key] = value;
        if (grid.x === NONE && grid.x2 !== NONE) { grid.x = grid.x2; grid.x2 = NONE; }
        if (grid.y === NONE && grid.y2 !== NONE) { grid.y = grid.y2; grid.y2 = NONE; }
        renderExplorer();
      });
    });
    $("swap").addEventListener("click", function () {
      var x = grid.x, x2 = grid.x2;
      grid.x = grid.y; grid.x2 = grid.y2; grid.y = x; grid.y2 = x2;
      renderExplorer();
    });
    $("gsize").addEventListener("input", function () {
      document.documentElement.style.setProperty("--cell", $("gsize").value + "px");
    });
    $("explorer-controls").addEventListener("submit", function (e) { e.preventDefault(); });
    $("xgrid").addEventListener("click", function (e) {
      var cell = e.target.closest ? e.target.closest("[data-item]") : null;
      if (!cell) return;
      var item = items[parseInt(cell.dataset.item, 10)];
      if (e.target.closest(".pin") || e.shiftKey) { e.preventDefault(); togglePin(item); return; }
      if (e.ctrlKey || e.metaKey || e.button !== 0) return;
      e.preventDefault();
      visible = gridOrder;
      open(gridOrder.indexOf(item));
    });
    $("compare-open").addEventListener("click", openCompare);
    $("compare-close").addEventListener("click", function () { $("compare").hidden = true; });
    $("compare-clear").addEventListener("click", function () { pinned = []; $("compare").hidden = true; renderExplorer(); });
  }

  function renderHolds() {
    var box = $("holds");
    box.textContent = "";
    var grouped = {};  // zip keys shown whole by their group (width+height): not held apart
    axes.forEach(function (axis) {
      if (axis.name.indexOf("+") > 0) axis.name.split("+").forEach(function (p) { grouped[p] = true; });
    });
    axes.forEach(function (axis, i) {
      if (placed(i) || follows(i) || (grouped[axis.name] && grid.holds[i] === ANY)) return;
      var select = el("select", { dataset: { hold: axis.name }, title: axis.name },
        [el("option", { value: "-1", text: "any" })]);
      axis.values.forEach(function (label, v) { select.appendChild(el("option", { value: String(v), text: label })); });
      select.value = String(grid.holds[i]);
      select.addEventListener("change", function () {
        grid.holds[i] = parseInt(select.value, 10);
        // holding LoRA "detail @ 1.0" says its name and weight: they are not held apart
        if (grid.holds[i] !== ANY) links[i].forEach(function (j) { grid.holds[j] = ANY; });
        renderExplorer();
      });
      box.appendChild(el("label", { className: axis.any ? "follows" : "" }, [document.createTextNode(axis.title + " "), select]));
    });
  }

  // An item's value on axis i; the no-LoRA image belongs under every LoRA name.
  function fits(entry, i, value) {
    var v = entry.v[i];
    return v === value || (axes[i].baseline >= 0 && v === axes[i].baseline);
  }

  function heldMatch(entry) {
    for (var i = 0; i < axes.length; i++) {
      if (placed(i) || grid.holds[i] === ANY || follows(i)) continue;
      if (!fits(entry, i, grid.holds[i])) return false;
    }
    return true;
  }

  // The positions of entry on the (axis, then-axis) pair: [] when it has no value there.
  function slots(entry, a, b) {
    var first = a === NONE ? [0] : spread(entry, a);
    var second = b === NONE ? [0] : spread(entry, b);
    var out = [];
    first.forEach(function (p) { second.forEach(function (q) { out.push(p + "," + q); }); });
    return out;
  }

  function spread(entry, i) {
    var v = entry.v[i];
    if (v < 0) return [];
    if (axes[i].baseline >= 0 && v === axes[i].baseline) {  // baseline: in every LoRA's column
      return axes[i].values.map(function (_, n) { return n; }).filter(function (n) { return n !== v; });
    }
    return [v];
  }

  function combos(a, b) {
    var out = [];
    var av = a === NONE ? [0] : axes[a].values.map(function (_, n) { return n; });
    var bv = b === NONE ? [0] : axes[b].values.map(function (_, n) { return n; });
    av.forEach(function (p) { bv.forEach(function (q) { out.push([p, q]); }); });
    return out;
  }

  function headerText(a, p) { return a === NONE ? "" : axes[a].values[p]; }

  // "seed 1234", "CFG 7", "checkpoint v1-5": a value with its axis named unless it says it
  function named(i, p) {
    var label = axes[i].values[p], low = label.toLowerCase();
    var words = axes[i].title.toLowerCase().split(" ");
    if (low.indexOf(words[0]) === 0 || low.indexOf(words[words.length - 1]) === 0) return label;
    return axes[i].title + " " + label;
  }

  function renderExplorer() {
    fillAxisSelect($("gx"), grid.x, false);
    fillAxisSelect($("gx2"), grid.x2, true);
    fillAxisSelect($("gy"), grid.y, true);
    fillAxisSelect($("gy2"), grid.y2, true);
    renderHolds();
    var cells = {};
    var failed = {};
    var used = { r: {}, c: {} };
    // A row or column shows when any image or failure has its values, whatever is held (so a
    // cell not generated yet keeps its place, and prompt x seed pairs that never meet do not).
    var place = function (bucket, entry, index) {
      var held = heldMatch(entry);
      slots(entry, grid.y, grid.y2).forEach(function (r) {
        slots(entry, grid.x, grid.x2).forEach(function (c) {
          used.r[r] = true; used.c[c] = true;
          if (!held) return;
          var key = r + "|" + c;
          (bucket[key] = bucket[key] || []).push(index);
        });
      });
    };
    items.forEach(function (item, n) { if (item.kind === "generation") place(cells, item, n); });
    (data.failures || []).forEach(function (f, n) { place(failed, f, n); });
    var rows = combos(grid.y, grid.y2).filter(function (rc) { return used.r[rc[0] + "," + rc[1]]; });
    var cols = combos(grid.x, grid.x2).filter(function (cc) { return used.c[cc[0] + "," + cc[1]]; });
    var table = $("xgrid");
    table.textContent = "";
    gridOrder = [];
    var head = el("thead", {});
    var corner = (grid.y === NONE ? "" : axes[grid.y].title + (grid.y2 === NONE ? "" : " · " + axes[grid.y2].title));
    var top = el("tr", {}, [el("th", { className: "corner", text: corner, rowSpan: grid.x2 === NONE ? 1 : 2,
                                       colSpan: grid.y2 === NONE ? 1 : 2 })]);
    var second = el("tr", {});
    var n = 0;
    while (n < cols.length) {  // outer column headers span their inner ones
      var span = 1;
      while (grid.x2 !== NONE && n + span < cols.length && cols[n + span][0] === cols[n][0]) span++;
      top.appendChild(el("th", { text: headerText(grid.x, cols[n][0]), colSpan: grid.x2 === NONE ? 1 : span, scope: "col" }));
      if (grid.x2 !== NONE) {
        for (var k = 0; k < span; k++) second.appendChild(el("th", { className: "inner", text: headerText(grid.x2, cols[n + k][1]), scope: "col" }));
      }
      n += span;
    }
    head.appendChild(top);
    if (grid.x2 !== NONE) head.appendChild(second);
    table.appendChild(head);
    var body = el("tbody", {});
    var pending = 0, done = 0, bad = 0;
    rows.forEach(function (rc, rn) {
      var tr = el("tr", {});
      if (grid.y2 === NONE) {
        tr.appendChild(el("th", { scope: "row", className: "row outer", text: headerText(grid.y, rc[0]) }));
      } else {
        if (rn === 0 || rows[rn - 1][0] !== rc[0]) {  // the outer label spans its inner rows
          var span = 1;
          while (rn + span < rows.length && rows[rn + span][0] === rc[0]) span++;
          tr.appendChild(el("th", { scope: "rowgroup", className: "row outer", rowSpan: span, text: headerText(grid.y, rc[0]) }));
        }
        tr.appendChild(el("th", { scope: "row", className: "row inner", text: headerText(grid.y2, rc[1]) }));
      }
      cols.forEach(function (cc) {
        var key = rc[0] + "," + rc[1] + "|" + cc[0] + "," + cc[1];
        var here = cells[key] || [];
        var td;
        if (here.length) {
          done++;
          var item = items[here[0]];
          gridOrder.push(item);
          var isPinned = pinned.indexOf(item) >= 0;
          td = el("td", { className: "cell ok" + (isPinned ? " pinned" : "") }, [
            el("a", { href: item.file, title: item.prompt.slice(0, 300), dataset: { item: String(here[0]) } }, [
              el("img", { src: item.file, alt: item.prompt.slice(0, 120), loading: "lazy", decoding: "async" }),
              el("button", { type: "button", className: "pin", title: isPinned ? "remove from compare" : "add to compare (or shift-click)", text: isPinned ? "✓" : "+" }),
              here.length > 1 ? el("span", { className: "more-badge", text: "+" + (here.length - 1), title: (here.length - 1) + " more images here: hold another axis to tell them apart" }) : null
            ])
          ]);
        } else if (failed[key]) {
          bad++;
          var f = data.failures[failed[key][0]];
          td = el("td", { className: "cell failed", title: f.error }, [el("span", { text: "failed: " + f.error })]);
        } else {
          pending++;
          td = el("td", { className: "cell pending" }, [el("span", { text: data.status === "running" ? "not generated yet" : "no image" })]);
        }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    // cells as tall as the images need: the bounding box of the sizes shown
    var maxW = 0, maxH = 0;
    gridOrder.forEach(function (it) {
      var p = it.params || {};
      if (typeof p.width === "number" && typeof p.height === "number") { maxW = Math.max(maxW, p.width); maxH = Math.max(maxH, p.height); }
    });
    table.style.setProperty("--aspect", maxW && maxH ? String(Math.min(3, Math.max(0.33, maxH / maxW))) : "1");
    var held = axes.map(function (a, i) { return placed(i) || follows(i) || grid.holds[i] === ANY ? null : named(i, grid.holds[i]); })
      .filter(Boolean);
    var note = rows.length && cols.length
      ? rows.length + " × " + cols.length + " cells: " + done + " with an image" + (bad ? ", " + bad + " failed" : "") + (pending ? ", " + pending + " empty" : "")
      : "No image matches: hold other values, or set a held axis to “any”.";
    $("explorer-status").textContent = note + (held.length ? " · holding " + held.join(", ") : "");
    $("explorer-status").dataset.cells = String(done);
    $("compare-open").textContent = "Compare (" + pinned.length + ")";
    $("compare-open").disabled = pinned.length < 1;
    saveHash();
  }

  function togglePin(item) {
    var at = pinned.indexOf(item);
    if (at >= 0) pinned.splice(at, 1); else pinned.push(item);
    renderExplorer();
  }

  function openCompare() {
    var list = $("compare-list");
    list.textContent = "";
    // what tells the pinned images apart: the axes whose values differ among them
    var differs = axes.map(function (_, i) {
      return pinned.some(function (it) { return it.v[i] !== pinned[0].v[i]; });
    });
    var primary = differs.map(function (d, i) { return d && !axes[i].any; });
    if (!primary.some(Boolean)) primary = differs;  // only axes that follow others differ
    pinned.forEach(function (item) {
      var labels = axes.map(function (a, i) { return primary[i] && item.v[i] >= 0 ? named(i, item.v[i]) : null; }).filter(Boolean);
      list.appendChild(el("figure", {}, [
        el("figcaption", { text: labels.join(" · ") || item.name }),
        el("img", { src: item.file, alt: item.prompt.slice(0, 120) })
      ]));
    });
    var same = axes.map(function (a, i) { return !differs[i] && !a.any && pinned[0] && pinned[0].v[i] >= 0 ? named(i, pinned[0].v[i]) : null; }).filter(Boolean);
    $("compare-note").textContent = pinned.length + " image" + (pinned.length === 1 ? "" : "s") + (same.length ? "; all: " + same.join(", ") : "");
    $("compare").hidden = false;
  }

  // --- tabs --------------------------------------------------------------------------------

  var tab = "grid";

  function showTab(name) {
    tab = name === "images" || !axes.length ? "images" : "grid";
    $("explorer").hidden = tab !== "grid";
    $("explorer-controls").hidden = tab !== "grid";
    $("images").hidden = tab !== "images";
    $("controls").hidden = tab !== "images";
    $("status").hidden = tab !== "images";
    $("tab-grid").setAttribute("aria-selected", String(tab === "grid"));
    $("tab-images").setAttribute("aria-selected", String(tab === "images"));
    $("tab-grid").disabled = !axes.length;
    if (tab === "grid") renderExplorer(); else update();
  }

  function tabs() {
    $("tab-grid").addEventListener("click", function () { showTab("grid"); });
    $("tab-images").addEventListener("click", function () { showTab("images"); });
  }

  header();
  controls();
  explorerControls();
  tabs();
  viewer();
  failures();
  defaultAxes();
  loadHash();
  syncControls();
  showTab(tab);
  window.addEventListener("hashchange", function () { loadHash(); syncControls(); showTab(tab); });
})();
