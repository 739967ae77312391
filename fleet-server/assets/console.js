// The fleet console's only script: actions and forms call the JSON operator API with the
// session's CSRF token (behind a confirmation where the page asks for one), bundle uploads
// report progress, and charts are drawn with uPlot from the JSON the server put in each
// chart element's data-json attribute. The pages refresh themselves through htmx (see
// layout.rs); this file holds no state the server does not.
(function () {
  "use strict";

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  function flash(text, isError) {
    var f = document.getElementById("flash");
    if (!f) return;
    f.textContent = text;
    f.className = isError ? "error" : "ok";
    f.setAttribute("role", isError ? "alert" : "status");
  }

  function refresh() {
    if (window.htmx) window.htmx.trigger(document.body, "refresh");
  }

  // One call of the operator API; resolves to the parsed JSON (or null for 204).
  function call(method, url, body) {
    var headers = { "X-CSRF-Token": csrf() };
    if (body !== undefined && body !== null) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method: method,
      headers: headers,
      body: body === undefined || body === null ? undefined : body,
      credentials: "same-origin",
    }).then(function (r) {
      if (r.status === 401) {
        window.location.href = "/console/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
        throw new Error("signed out");
      }
      if (r.status === 204) return null;
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { j = null; }
        if (!r.ok) throw new Error((j && j.error) || ("HTTP " + r.status));
        return j;
      });
    });
  }

  // Form fields as the API's JSON: `a.b` names nest, data-type list/int/float convert
  // (fragment: a configuration file as [[name, text]]),
  // empty fields are left out, data-path fields go into the URL template instead.
  function formJson(form) {
    var out = {};
    var path = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.type === "submit" || el.type === "button" || el.type === "file") return;
      var v = el.value;
      if (el.type === "checkbox") v = el.checked ? (el.value || "true") : "";
      if (v === "") return;
      var t = el.getAttribute("data-type");
      if (t === "list") v = v.split(/[\s,]+/).filter(function (x) { return x !== ""; });
      else if (t === "int") v = parseInt(v, 10);
      else if (t === "float") v = parseFloat(v);
      else if (t === "fragment") v = [[el.getAttribute("data-fragment") || "console", v]];
      if (el.hasAttribute("data-path")) { path[el.name] = v; return; }
      var keys = el.name.split(".");
      var o = out;
      for (var i = 0; i < keys.length - 1; i++) {
        o[keys[i]] = o[keys[i]] || {};
        o = o[keys[i]];
      }
      o[keys[keys.length - 1]] = v;
    });
    return { body: out, path: path };
  }

  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button.act");
    if (!b) return;
    ev.preventDefault();
    var c = b.getAttribute("data-confirm");
    if (c && !window.confirm(c)) return;
    b.disabled = true;
    call(b.getAttribute("data-method"), b.getAttribute("data-url"), b.getAttribute("data-body"))
      .then(function () {
        flash((b.textContent || "Done").trim() + ": done.", false);
        refresh();
      })
      .catch(function (e) { flash(e.message, true); })
      .then(function () { b.disabled = false; });
  });

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.id === "upload") { ev.preventDefault(); upload(form); return; }
    if (!form.classList.contains("api")) return;
    ev.preventDefault();
    var c = form.getAttribute("data-confirm");
    if (c && !window.confirm(c)) return;
    var j = formJson(form);
    var url = form.getAttribute("data-url");
    var tpl = form.getAttribute("data-url-template");
    if (tpl) {
      url = tpl.replace(/\{(\w+)\}/g, function (_, k) { return encodeURIComponent(j.path[k] || ""); });
    }
    var btn = form.querySelector('button[type="submit"]');
    if (btn) btn.disabled = true;
    call(form.getAttribute("data-method") || "POST", url, JSON.stringify(j.body))
      .then(function (res) {
        if (form.getAttribute("data-after") === "signin") {
          window.location.href = "/console/login";
          return;
        }
        var show = form.getAttribute("data-show");
        var out = form.querySelector(".token-out");
        if (show && out && res && res[show]) {
          out.querySelector(".token-value").textContent = res[show];
          out.hidden = false;
        }
        Array.prototype.forEach.call(form.querySelectorAll('input[type="password"]'), function (p) { p.value = ""; });
        flash("Saved.", false);
        refresh();
      })
      .catch(function (e) { flash(e.message, true); })
      .then(function () { if (btn) btn.disabled = false; });
  });

  function upload(form) {
    var input = form.querySelector('input[type="file"]');
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    if (!input.files || !input.files[0]) return;
    var file = input.files[0];
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("data-url"));
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "Uploading " + file.name + "…";
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) {
        bar.value = Math.round((e.loaded / e.total) * 100);
        status.textContent = "Uploading " + file.name + ": " + bar.value + " %";
      }
    };
    xhr.onload = function () {
      var j = null;
      try { j = JSON.parse(xhr.responseText); } catch (e) { j = null; }
      if (xhr.status === 201 && j) {
        bar.value = 100;
        status.textContent = "Stored " + j.name + " " + j.version + " (#" + j.version_number + ").";
        status.className = "ok";
        input.value = "";
        refresh();
      } else {
        status.textContent = "Refused: " + ((j && j.error) || ("HTTP " + xhr.status));
        status.className = "error";
      }
    };
    xhr.onerror = function () {
      status.textContent = "Upload failed: the connection was lost.";
      status.className = "error";
    };
    xhr.send(file);
  }

  // ---- charts ----

  function chartWidth(el) {
    var w = el.getBoundingClientRect().width || (el.parentNode && el.parentNode.getBoundingClientRect().width) || 0;
    return Math.max(300, Math.floor(w) || 600);
  }

  var palette = ["#1f5fa8", "#b3261e", "#2e7d32", "#6a3d9a", "#b35900", "#00838f", "#5d4037", "#ad1457"];
  var charts = {};

  function chartOptions(el, data) {
    var series = [{ label: "time" }];
    data.series.forEach(function (s, i) {
      series.push({
        label: s.label,
        stroke: palette[i % palette.length],
        width: 2,
        dash: s.dash ? [6, 4] : undefined,
        spanGaps: false,
        points: { show: data.x.length < 60, size: 5 },
      });
    });
    return {
      title: el.getAttribute("data-title") || "",
      width: chartWidth(el),
      height: 260,
      series: series,
      legend: { live: false },
      axes: [{}, { label: data.y || "" }],
      scales: { x: { time: true } },
    };
  }

  // The columns for uPlot, with a break (a null point) wherever the time between two
  // points is more than five times the usual step: an outage is a gap, not a line across it.
  function chartData(data) {
    var x = data.x;
    var steps = [];
    for (var i = 1; i < x.length; i++) steps.push(x[i] - x[i - 1]);
    steps.sort(function (a, b) { return a - b; });
    var usual = steps.length ? steps[Math.floor(steps.length / 2)] : 0;
    var xs = [];
    var cols = data.series.map(function () { return []; });
    for (var j = 0; j < x.length; j++) {
      if (j > 0 && usual > 0 && x[j] - x[j - 1] > 5 * usual) {
        xs.push((x[j] + x[j - 1]) / 2);
        cols.forEach(function (c) { c.push(null); });
      }
      xs.push(x[j]);
      data.series.forEach(function (s, k) { cols[k].push(s.values[j]); });
    }
    if (xs.length === 1) {
      // One point: show five minutes either side of it (uPlot would span years).
      xs = [xs[0] - 300, xs[0], xs[0] + 300];
      cols = cols.map(function (c) { return [null, c[0], null]; });
    }
    return [xs].concat(cols);
  }

  function drawCharts() {
    if (!window.uPlot) return;
    var seen = {};
    document.querySelectorAll("div.chart[data-chart]").forEach(function (el) {
      var id = el.getAttribute("data-chart");
      seen[id] = true;
      var data;
      try { data = JSON.parse(el.getAttribute("data-json")); } catch (e) { return; }
      if (!data.x || data.x.length === 0) {
        el.textContent = "No data yet.";
        return;
      }
      var old = charts[id];
      if (old && old.series.length === data.series.length + 1) {
        // Same chart after a refresh: keep it (no flicker), new data.
        if (old.root.parentNode !== el) {
          el.appendChild(old.root);
          if (resizer) resizer.observe(el);
        }
        old.setData(chartData(data));
        return;
      }
      if (old) old.destroy();
      el.textContent = "";
      charts[id] = new window.uPlot(chartOptions(el, data), chartData(data), el);
      if (resizer) resizer.observe(el);
    });
    Object.keys(charts).forEach(function (id) {
      if (!seen[id]) { charts[id].destroy(); delete charts[id]; }
    });
  }

  // Charts follow their container's width (window resizes, late layout).
  var resizer = window.ResizeObserver ? new window.ResizeObserver(function (entries) {
    entries.forEach(function (e) {
      var id = e.target.getAttribute("data-chart");
      var u = charts[id];
      if (u && u.root.parentNode === e.target) {
        var w = chartWidth(e.target);
        if (Math.abs(u.width - w) > 4) u.setSize({ width: w, height: 260 });
      }
    });
  }) : null;
  document.addEventListener("DOMContentLoaded", drawCharts);
  document.addEventListener("htmx:afterSettle", drawCharts);
})();
