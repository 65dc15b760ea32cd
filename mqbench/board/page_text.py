"""The leaderboard page's fixed text: protocol, glossary, plot captions, style and script.

Kept apart from mqbench.board.page, which assembles the page from the records, reports and
task files; everything here is static.
"""

INTRO = ("How well do training-free proxies predict which mixed-precision bit configurations "
         "of a model quantize best? Each task's proxies are scored against a measured table "
         "of quantized configurations, next to floors that need no proxy at all.")

PROTOCOL = """
<p>A <dfn>configuration</dfn> gives every quantizable unit of a model one weight bit-width
from the task's choices (a unit is a layer, plus any layer tied to it, such as a residual
block's 1&times;1 downsample convolution); activations keep the task's fixed bit-width.
For each task the ground-truth <dfn>table</dfn> holds every uniform configuration and a
stratified random sample (sizes below), each quantized with the task's
<a href="#quantizer">quantizer</a> and evaluated on held-out data: top-1 accuracy for vision
tasks, perplexity (exp of the mean per-token cross-entropy) for language-model tasks. The
table also measures each unit alone at each bit-width with the rest in float (the per-layer
sensitivity behind &rho;_sens and the heatmaps), and re-measures a subset under a second
calibration seed (its noise).</p>
<p>A <dfn>proxy</dfn> is training-free: it sees the full-precision model and one calibration
batch, never the table. A <em>layer</em> proxy returns one sensitivity s<sub>l</sub> per unit
and a configuration scores
<span class="nowrap">&minus;&Sigma;<sub>l</sub> s<sub>l</sub>&middot;&Vert;Q<sub>b<sub>l</sub></sub>\
(W<sub>l</sub>)&minus;W<sub>l</sub>&Vert;&sup2;</span>
(HAWQ's rule: the quantization error of each layer at its bit-width, weighted by the
proxy); a <em>layer_bit</em> proxy returns a damage d<sub>l,b</sub> per unit and bit-width and
a configuration scores &minus;&Sigma;<sub>l</sub> d<sub>l,b<sub>l</sub></sub>; a
<em>config</em> proxy scores whole configurations. Layer proxies get the quantization-error
term for free; layer_bit proxies do not, so compare kinds with care. Each proxy's scores are
then correlated with the table (the correlation table) and turned into bit allocations under
budgets by an exact integer linear program, which are quantized and measured (the downstream
table).</p>
<p><dfn>Ties</dfn>: orders by predicted score are descending, ties broken by the
configuration key in ascending order, so the top-k% cut is deterministic (EMQ's code
reverses an unstable argsort, which can put other tied configurations inside the cut).
<dfn>Bootstrap CIs</dfn> (in brackets) are 95% percentile intervals over configurations
resampled with replacement (1,000 resamples, seeded by the task), so they say how much a
number depends on which configurations the table happened to sample; they do not include
the proxy's own variance across calibration batches.</p>
<p id="quantizer">The <dfn>quantizer</dfn> is stated with each task below. It defines the
ground truth, so a proxy's ranking holds for that quantizer only.</p>
"""
REFERENCE = {
    "floor": ("Floors", ("scores that use no knowledge of the model beyond what every proxy gets "
              "for free: the aggregation formula with s<sub>l</sub> = 1 (<code>uniform</code>), "
              "the number of units at the lowest bit-width, the model size, and random "
              "sensitivities over many seeds. A proxy is informative only by what it adds "
              "over the best floor.")),
    "oracle": ("Oracles", ("the table's own single-layer measurements used as the proxy: the "
               "best an additive proxy can do. The gap from the oracle to the best proxy is "
               "the room left; the gap from the oracle to 1 comes from interactions between "
               "layers that no per-layer score can see.")),
    "ceiling": ("Noise ceiling", ("the correlation of the table with itself measured twice: on "
                "two disjoint halves of the test set (ground truth v2, test-sample noise) or, "
                "for version-1 tables, under a second calibration seed: no proxy can be "
                "expected to exceed it, and a metric within noise of it cannot be improved on "
                "this table.")),
}
GLOSSARY = {  # report columns that are not registered metrics
    "per_config_ms": "milliseconds per configuration: proxy time plus scoring time divided by "
                     "the number of configurations; measured on whatever machine produced the "
                     "record, so compare with care",
    "acc": "top-1 accuracy (LM tasks: next-token accuracy) of the ILP allocation, quantized "
           "and evaluated",
    "best_table_acc": "best table configuration within the same budget",
    "ppl": "LM tasks: perplexity exp(cross-entropy) of the ILP allocation on the test windows",
    "best_table_ppl": "LM tasks: lowest perplexity of a table configuration within the budget",
    "gap": "how far the allocation is from the best table configuration within the budget "
           "(accuracy: best minus the allocation's; perplexity: the allocation's minus best; "
           "negative: the allocation beats every sampled table configuration)",
    "size_kb": "weight storage of the allocation, KiB", "mbops": "bit operations, millions",
    "search_s": "seconds the proxy took (statistics shared by all proxies not counted)",
}


CAPTIONS = {
    "scatter": "Each panel: a proxy's score rank against the ground truth of every table "
               "configuration; ρs in the title (and its difference from the best floor, "
               "where floors are computed).",
    "pareto": "Ground truth against model size: the table's configurations (grey), its "
              "Pareto front (line), and each proxy's ILP allocations under the size budgets "
              "(the top proxies named; the others, baselines and floors grouped).",
    "sensitivity": "Per-unit damage, units × weight bit-widths: measured (loss increase with "
                   "the unit alone at that bit-width) beside what the top proxies predict "
                   "(recovered from their configuration scores, relative to the highest "
                   "bit-width); colour is log10 of the value over the panel's maximum.",
}


STYLE = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 12px 3em;
color:#222;overflow-wrap:anywhere}
h1{margin:.6em 0 .2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
nav ul{display:flex;flex-wrap:wrap;gap:.3em 1em;list-style:none;padding:0}
code{font-size:90%;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;border:1px solid #eee}
table.board{border-collapse:collapse;font-size:13px;overflow-wrap:normal;white-space:nowrap}
th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
th.num,td.num{text-align:right}thead th{background:#f4f4f4}
th button{all:inherit;display:inline;cursor:pointer;padding:0}
th button:focus-visible{outline:2px solid #36c}
th[aria-sort=descending]::after{content:" \\25BE"}th[aria-sort=ascending]::after{content:" \\25B4"}
th[aria-sort=none]::after{content:" \\2195";color:#aaa}
tr.group th{background:#e8eef8;text-align:left}
tr.ref td{background:#f6f6f6;color:#555;font-style:italic}
td.best{font-weight:bold}small{color:#777}
.badge{font:11px system-ui;font-style:normal;border:1px solid #999;border-radius:3px;padding:0 3px;
color:#444}.badge.floor,.badge.oracle,.badge.ceiling{border-color:#a60;color:#a60}
.kind{font-size:11px;color:#888}.cite{font-size:11px;text-decoration:none}.dagger{color:#a00}
.note{font-size:13px;color:#555}dl.defs dt{font-weight:600;margin-top:.4em}
dl.defs dd{margin-left:1.2em}
dl.spec{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em}dl.spec dd{margin:0}
@media (max-width:600px){dl.spec{grid-template-columns:1fr}dl.spec dd{margin-left:1em}}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}ul.refs{list-style:none;padding:0}.nowrap{white-space:nowrap}
p.summary{background:#f7f9fc;padding:.5em .8em;border-left:3px solid #69c}
#filters{margin:1em 0;display:flex;flex-wrap:wrap;gap:1em}
"""

SCRIPT = """
(function () {
  function val(td) { const v = td.dataset.v; return v === "" ? null : (isNaN(+v) ? v : +v); }
  function sortBy(table, i) {
    const th = table.tHead.rows[0].cells[i], cur = th.getAttribute("aria-sort");
    const first = th.classList.contains("num") && th.dataset.better !== "lower"
      ? "descending" : "ascending";
    const dir = cur === "none" ? first : (cur === "descending" ? "ascending" : "descending");
    for (const h of table.tHead.rows[0].cells) h.setAttribute("aria-sort", "none");
    th.setAttribute("aria-sort", dir);
    const s = dir === "ascending" ? 1 : -1;
    for (const body of table.tBodies) {
      const rows = Array.from(body.rows).filter(r => !r.classList.contains("group"));
      rows.sort((a, b) => {
        const x = val(a.cells[i]), y = val(b.cells[i]);
        if (x === null || y === null) return (x === null) - (y === null);
        return (x < y ? -1 : x > y ? 1 : 0) * s;
      });
      for (const r of rows) body.appendChild(r);
    }
  }
  for (const table of document.querySelectorAll("table.board")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
      const b = document.createElement("button");
      b.type = "button";
      while (th.firstChild) b.appendChild(th.firstChild);
      th.appendChild(b);
      b.addEventListener("click", () => sortBy(table, i));
    });
  }
  const form = document.getElementById("filters");
  if (!form) return;
  form.hidden = false;
  const pick = () => {
    const t = form.elements.task.value, f = form.elements.family.value;
    for (const s of document.querySelectorAll("section.task"))
      s.hidden = !((t === "" || s.dataset.task === t) && (f === "" || s.dataset.family === f));
  };
  form.addEventListener("change", pick);
  pick();
})();
"""
