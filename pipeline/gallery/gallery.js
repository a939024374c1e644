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
    if (counts.total) parts.push((counts.done || 0) + " of " + counts.total + " variants this run");
    if ((data.failures || []).length) parts.push(data.failures.length + " failed");
    parts.push("page written " + data.updated + (data.status === "running" ? " (reload for new images)" : ""));
    $("run").textContent = parts.join(" · ");
    var grids = data.grids || [];
    if (grids.length) {
      $("grids").hidden = false;
      grids.forEach(function (g) {
        var text = (g.page || g.title || g.file) + (g.parts > 1 ? " (part " + g.part + "/" + g.parts + ")" : "");
        var note = g.cells ? " · " + g.done + "/" + g.cells + (g.failed ? ", " + g.failed + " failed" : "") : "";
        $("grid-list").appendChild(el("li", {}, [
          el("a", { href: g.file, target: "_blank", rel: "noopener", title: text }, [
            el("img", { src: g.file, alt: "", loading: "lazy", decoding: "async" }),
            el("span", { text: text + note })
          ])
        ]));
      });
    }
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

  header();
  controls();
  viewer();
  failures();
  loadHash();
  syncControls();
  update();
  window.addEventListener("hashchange", function () { loadHash(); syncControls(); update(); });
})();
