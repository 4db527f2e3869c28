// keygate console: the behaviour the server-rendered pages leave to script (every page
// works without it). Loaded with `defer` from /console/assets, never inline (the CSP
// forbids inline script); run again on content htmx swaps in.
(function () {
  "use strict";

  var palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
  var charts = [];

  function once(el, name) {
    if (el.dataset["bound" + name]) return false;
    el.dataset["bound" + name] = "1";
    return true;
  }

  function openDialog(dialog) {
    if (!dialog || typeof dialog.showModal !== "function") return false;
    if (dialog.open) dialog.close();
    dialog.showModal();
    var first = dialog.querySelector("input:not([type=hidden]), select, button");
    if (first) first.focus();
    return true;
  }

  function copy(button) {
    var input = document.getElementById(button.dataset.copy);
    var status = button.closest("dialog") && button.closest("dialog").querySelector(".copied");
    function done(ok) {
      if (status) status.textContent = ok ? "Copied to the clipboard." : "Select the secret and copy it.";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () { done(false); });
    } else {
      input.focus();
      input.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      done(ok);
    }
  }

  function drawCharts(container) {
    fetch(container.dataset.usageSrc, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("usage answered " + r.status);
        return r.json();
      })
      .then(function (data) {
        container.textContent = "";
        if (!data.models.length) {
          var empty = document.createElement("p");
          empty.textContent = "No requests in this range.";
          container.appendChild(empty);
          return;
        }
        [["requests", "Requests per day"], ["tokens", "Tokens per day"], ["cost_usd", "Cost per day (USD)"]].forEach(function (metric) {
          var figure = document.createElement("figure");
          figure.className = "chart";
          figure.dataset.metric = metric[0];
          var caption = document.createElement("figcaption");
          caption.textContent = metric[1];
          figure.appendChild(caption);
          var plot = document.createElement("div");
          figure.appendChild(plot);
          container.appendChild(figure);
          var series = [{}].concat(data.models.map(function (model, i) {
            return { label: model, stroke: palette[i % palette.length], width: 2, points: { show: true } };
          }));
          var chart = new uPlot({
            width: Math.max(260, container.clientWidth - 8),
            height: 200,
            series: series,
            scales: { x: { time: true } },
            // One tick per day (or per week when they would crowd), figures readable
            // at any size (cents of a cent included).
            axes: [{ incrs: [86400, 2 * 86400, 7 * 86400] }, { size: 72, values: function (u, vals) {
              return vals.map(function (v) { return v === 0 ? "0" : Number(v.toPrecision(2)).toString(); });
            } }]
          }, [data.x].concat(data[metric[0]]), plot);
          charts.push({ chart: chart, container: container });
        });
      })
      .catch(function (err) {
        container.textContent = "The chart could not be loaded (" + err.message + "); the table below has the same figures.";
      });
  }

  function init(root) {
    root.querySelectorAll("[data-dialog]").forEach(function (link) {
      if (!once(link, "Dialog")) return;
      link.addEventListener("click", function (event) {
        if (openDialog(document.getElementById(link.dataset.dialog))) event.preventDefault();
      });
    });
    root.querySelectorAll("[data-close]").forEach(function (link) {
      if (!once(link, "Close")) return;
      link.addEventListener("click", function (event) {
        var dialog = document.getElementById(link.dataset.close);
        if (dialog && dialog.open) {
          event.preventDefault();
          dialog.close();
        }
      });
    });
    root.querySelectorAll("dialog[open][data-modal]").forEach(function (dialog) {
      if (once(dialog, "Modal")) openDialog(dialog);
    });
    root.querySelectorAll("[data-copy]").forEach(function (button) {
      if (!once(button, "Copy")) return;
      button.addEventListener("click", function () { copy(button); });
    });
    root.querySelectorAll("[data-usage-src]").forEach(function (container) {
      if (once(container, "Chart")) drawCharts(container);
    });
  }

  window.addEventListener("resize", function () {
    charts = charts.filter(function (c) { return document.body.contains(c.container); });
    charts.forEach(function (c) {
      c.chart.setSize({ width: Math.max(260, c.container.clientWidth - 8), height: 200 });
    });
  });

  if (window.htmx) {
    window.htmx.onLoad(init);
  } else {
    init(document);
  }
})();
