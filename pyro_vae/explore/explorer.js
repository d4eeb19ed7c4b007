"use strict";
// pyro-vae's latent-space explorer. Everything it needs is in the page: the spec (JSON, arrays
// as base64) written by pyro_vae/explore/spec.py. Nothing is fetched; no server is needed.
(function () {
  const spec = JSON.parse(document.getElementById("spec").textContent);
  const $ = (id) => document.getElementById(id);
  const SIZE = 440;

  // ------------------------------------------------------------------ arrays of the spec
  function bytes(b) {
    const s = atob(b.b64);
    const u = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
    return u;
  }
  function array(b) {
    if (!b) return null;
    const u = bytes(b);
    if (b.dtype === "f32") return new Float32Array(u.buffer);
    if (b.dtype === "i16") return new Int16Array(u.buffer);
    return u;
  }

  const C = spec.image.c, H = spec.image.h, W = spec.image.w, D = C * H * W;
  const [X0, X1, Y0, Y1] = spec.window;
  const d = spec.dim, center = spec.plane.center, axes = spec.plane.axes;
  const points = array(spec.points);
  const N = points.length / 2;
  const labels = spec.labels ? array(spec.labels) : null;
  const qMean = array(spec.q.mean), qCov = array(spec.q.cov);
  const kl = spec.q.kl ? array(spec.q.kl) : null;
  const labelColours = spec.colours.labels, heatLut = array(spec.colours.heat);

  const tests = (function () {
    const t = spec.tests, raw = array(t);
    const rowBytes = t.encoding === "bits" ? Math.ceil(D / 8) : D;
    return function (j) {
      const out = new Float64Array(D);
      for (let k = 0; k < D; k++) {
        if (t.encoding === "bits") out[k] = (raw[j * rowBytes + (k >> 3)] >> (k & 7)) & 1;
        else if (t.encoding === "u8") out[k] = raw[j * D + k] / 255;
        else out[k] = raw[j * D + k];
      }
      return out;
    };
  })();

  // ------------------------------------------------------------------ geometry of the plane
  function toPx(u0, u1) {
    return [(u0 - X0) / (X1 - X0) * SIZE, (1 - (u1 - Y0) / (Y1 - Y0)) * SIZE];
  }
  function toPlane(px, py) {
    return [X0 + px / SIZE * (X1 - X0), Y0 + (1 - py / SIZE) * (Y1 - Y0)];
  }
  function lift(u) { // z = centre + u1 a1 + u2 a2
    const z = new Float64Array(d);
    for (let i = 0; i < d; i++) z[i] = center[i] + u[0] * axes[0][i] + u[1] * axes[1][i];
    return z;
  }

  // ------------------------------------------------------------------ the decoder
  function erf(x) { // Taylor series below 3, a continued fraction for erfc above: < 1e-13
    const a = Math.abs(x);
    if (a < 3) {
      let term = a, sum = a;
      for (let n = 1; n < 100; n++) {
        term *= -a * a / n;
        const add = term / (2 * n + 1);
        sum += add;
        if (Math.abs(add) < 1e-17) break;
      }
      return Math.sign(x) * sum * 2 / Math.sqrt(Math.PI);
    }
    let f = 0;
    for (let n = 60; n >= 1; n--) f = n / 2 / (a + f);
    const erfc = Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
    return Math.sign(x) * (1 - erfc);
  }
  const softplus = (v) => (v > 0 ? v + Math.log1p(Math.exp(-v)) : Math.log1p(Math.exp(v)));
  const sigmoid = (v) => 1 / (1 + Math.exp(-v));
  const logsigmoid = (v) => -softplus(-v);
  const ACT = {
    relu: (v) => (v > 0 ? v : 0),
    tanh: Math.tanh,
    silu: (v) => v * sigmoid(v),
    sigmoid: sigmoid,
    elu: (v) => (v > 0 ? v : Math.expm1(v)),
    softplus: (v) => (v > 20 ? v : Math.log1p(Math.exp(v))),  // torch: beta 1, threshold 20
    gelu: (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)),
    "gelu-tanh": (v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v))),
  };

  const dec = spec.decoder;
  const layers = dec.mode === "mlp" ? dec.layers.map((L) => ({
    W: array(L.weight), b: array(L.bias), out: L.bias.shape[0], inp: L.weight.shape[1],
    act: L.act ? ACT[L.act] : null,
  })) : null;

  function mlp(z) { // the run's MLP at z, in double precision
    let h = Float64Array.from(z);
    for (const L of layers) {
      const out = new Float64Array(L.out), W = L.W, b = L.b, n = L.inp;
      for (let o = 0; o < L.out; o++) {
        let s = b[o];
        const r = o * n;
        for (let i = 0; i < n; i++) s += W[r + i] * h[i];
        out[o] = L.act ? L.act(s) : s;
      }
      h = out;
    }
    return h;
  }

  const laws = dec.laws.map((law) => {
    const params = {};
    for (const [name, p] of Object.entries(law.params)) {
      const a = array(p.data);
      params[name] = p.const ? Float64Array.from({ length: D }, (_, k) => a[a.length === 1 ? 0 : k]) : a;
    }
    return { name: law.name, offset: law.offset, params: params, consts: law.params };
  });
  let lawIndex = 0;

  // The law's parameters at plane point u: from the MLP, or interpolated on the grid.
  function paramsAt(u, law) {
    law = law || laws[lawIndex];
    const out = {};
    if (dec.mode === "mlp") { // the decoder gives one parameter; the others are constants
      for (const k of Object.keys(law.params)) out[k] = law.params[k];
      out[dec.output] = mlp(lift(u));
      return out;
    }
    const n = dec.resolution;
    const fx = Math.min(Math.max((u[0] - X0) / (X1 - X0) * (n - 1), 0), n - 1);
    const fy = Math.min(Math.max((u[1] - Y0) / (Y1 - Y0) * (n - 1), 0), n - 1);
    const j0 = Math.min(Math.floor(fx), n - 2), i0 = Math.min(Math.floor(fy), n - 2);
    const tx = fx - j0, ty = fy - i0;
    const w = [(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty];
    const rows = [i0 * n + j0, i0 * n + j0 + 1, (i0 + 1) * n + j0, (i0 + 1) * n + j0 + 1];
    for (const [k, a] of Object.entries(law.params)) {
      if (law.consts[k].const) { out[k] = a; continue; }
      const v = new Float64Array(D);
      for (let c = 0; c < 4; c++) {
        if (w[c] === 0) continue;
        const base = rows[c] * D;
        for (let p = 0; p < D; p++) v[p] += w[c] * a[base + p];
      }
      out[k] = v;
    }
    return out;
  }

  // ------------------------------------------------------------------ the likelihoods
  function gauss() {
    let u = 0;
    while (u === 0) u = Math.random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
  }
  const LO = 0.499, HI = 0.501; // torch's continuous Bernoulli: Taylor series near λ = 1/2
  function cbLogNorm(l) {
    const p = sigmoid(l);
    if (p <= LO || p > HI) {
      return Math.log(Math.abs(Math.log1p(-p) - Math.log(p))) -
        (p <= 0.5 ? Math.log1p(-2 * p) : Math.log(2 * p - 1));
    }
    const x = (p - 0.5) * (p - 0.5);
    return Math.log(2) + (4 / 3 + 104 / 45 * x) * x;
  }
  const HALF = 0.5 / 255;
  const LAW = {
    bernoulli: {
      mean: (p, k) => sigmoid(p.logits[k]),
      draw: (p, k) => (Math.random() < sigmoid(p.logits[k]) ? 1 : 0),
      logp: (p, k, x) => x * p.logits[k] - softplus(p.logits[k]),
    },
    normal: {
      mean: (p, k) => p.loc[k],
      draw: (p, k) => p.loc[k] + p.scale[k] * gauss(),
      logp: (p, k, x) => {
        const r = (x - p.loc[k]) / p.scale[k];
        return -0.5 * r * r - Math.log(p.scale[k]) - 0.5 * Math.log(2 * Math.PI);
      },
    },
    "continuous-bernoulli": {
      mean: (p, k) => {
        const q = sigmoid(p.logits[k]);
        if (q <= LO || q > HI) return q / (2 * q - 1) + 1 / (Math.log1p(-q) - Math.log(q));
        const x = q - 0.5;
        return 0.5 + (1 / 3 + 16 / 45 * x * x) * x;
      },
      draw: (p, k) => {
        const q = sigmoid(p.logits[k]), u = Math.random();
        if (q > LO && q <= HI) return u;
        return (Math.log1p(-q + u * (2 * q - 1)) - Math.log1p(-q)) / (Math.log(q) - Math.log1p(-q));
      },
      logp: (p, k, x) => x * p.logits[k] - softplus(p.logits[k]) + cbLogNorm(p.logits[k]),
    },
    "discretized-logistic": {
      mean: (p, k) => {
        let s = 0;
        for (let j = 1; j < 256; j++) s += sigmoid((p.loc[k] - (j - 0.5) / 255) / p.scale[k]);
        return s / 255;
      },
      draw: (p, k) => {
        const u = Math.min(Math.max(Math.random(), 1e-6), 1 - 1e-6);
        const y = p.loc[k] + p.scale[k] * (Math.log(u) - Math.log1p(-u));
        return Math.min(Math.max(Math.round(y * 255), 0), 255) / 255;
      },
      logp: (p, k, x) => {
        const up = (x + HALF - p.loc[k]) / p.scale[k], lo = (x - HALF - p.loc[k]) / p.scale[k];
        if (x < HALF) return logsigmoid(up);
        if (x > 1 - HALF) return logsigmoid(-lo);
        return logsigmoid(up) + logsigmoid(-lo) + Math.log(-Math.expm1(-2 * HALF / p.scale[k]));
      },
    },
    mean: { mean: (p, k) => p.mean[k], draw: null, logp: null },
  };
  const law = () => LAW[laws[lawIndex].name];

  function meanImage(params) {
    const f = law().mean, out = new Float64Array(D);
    for (let k = 0; k < D; k++) out[k] = f(params, k);
    return out;
  }
  function drawImage(params) {
    const f = law().draw, out = new Float64Array(D);
    for (let k = 0; k < D; k++) out[k] = f(params, k);
    return out;
  }
  function logLik(params, x) {
    const f = law().logp;
    let s = 0;
    for (let k = 0; k < D; k++) s += f(params, k, x[k]);
    return s + D * laws[lawIndex].offset;
  }

  // ------------------------------------------------------------------ painting images
  function sizeFor(target) { return Math.max(1, Math.floor(target / Math.max(H, W))); }
  const MEAN_SCALE = sizeFor(224), DRAW_SCALE = sizeFor(96), GAP = 6, NDRAWS = 6;

  function paint(ctx, values, scale, left, top) {
    const img = ctx.createImageData(W * scale, H * scale), px = img.data;
    for (let h = 0; h < H; h++) {
      for (let w = 0; w < W; w++) {
        const rgb = [0, 1, 2].map((c) => {
          const v = values[(C === 3 ? c : 0) * H * W + h * W + w];
          return Math.round(Math.min(Math.max(v, 0), 1) * 255);
        });
        for (let dy = 0; dy < scale; dy++) {
          for (let dx = 0; dx < scale; dx++) {
            const o = 4 * ((h * scale + dy) * W * scale + w * scale + dx);
            px[o] = rgb[0]; px[o + 1] = rgb[1]; px[o + 2] = rgb[2]; px[o + 3] = 255;
          }
        }
      }
    }
    ctx.putImageData(img, left || 0, top || 0);
  }
  function sized(canvas, w, h) { canvas.width = w; canvas.height = h; return canvas.getContext("2d"); }

  // ------------------------------------------------------------------ state and events
  const state = { u: [0, 0], chosen: 0, hover: -1, updates: 0, heat: null, heatGen: 0 };
  const api = window.explorer = {
    ready: false, heatReady: false, readyMs: null, state: state,
    mode: dec.mode, resolution: dec.resolution, window: spec.window, size: SIZE,
    lawAt: (u) => { const p = paramsAt(u); const o = {}; for (const k in p) o[k] = Array.from(p[k]); return o; },
    meanAt: (u) => Array.from(meanImage(paramsAt(u))),
    mlp: (z) => Array.from(mlp(z)),
    logLikAt: (u, j) => logLik(paramsAt(u), tests(j)),
    lift: (u) => Array.from(lift(u)),
    choose: (j) => choose(j),
  };

  function setPointer(u) {
    state.u = u;
    state.z = Array.from(lift(u));
    if (!state.frame) state.frame = requestAnimationFrame(update);
  }
  function update() {
    state.frame = 0;
    const params = paramsAt(state.u);
    paint($("mean").getContext("2d"), meanImage(params), MEAN_SCALE);
    paintDraws(params);
    readZ(params);
    drawOverlays();
    state.updates += 1;
    api.z = state.z;
    api.u = state.u;
  }
  function paintDraws(params) {
    const canvas = $("draws"), tile = DRAW_SCALE;
    const ctx = sized(canvas, NDRAWS * W * tile + (NDRAWS + 1) * GAP, H * tile + 2 * GAP);
    ctx.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--gutter");
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!law().draw) return;
    for (let i = 0; i < NDRAWS; i++) paint(ctx, drawImage(params), tile, GAP + i * (W * tile + GAP), GAP);
  }
  function fmt(v, digits) { return (v >= 0 ? " " : "") + v.toFixed(digits === undefined ? 2 : digits); }
  function readZ(params) {
    const z = state.z;
    let text = d <= 2 ? `${spec.site} = (${z.map((v) => fmt(v)).join(", ")})`
      : `u = (${state.u.map((v) => fmt(v)).join(", ")}) on the plane\n${spec.site} = (` +
        z.slice(0, 6).map((v) => fmt(v)).join(", ") + (d > 6 ? `, … ${d - 6} more)` : ")");
    if (law().logp) text += `\nlog p(x | ${spec.site}) of the chosen image here: ${logLik(params, tests(state.chosen)).toFixed(1)} nats`;
    $("zread").textContent = text;
  }

  function pointerOn(canvas, hover) {
    canvas.addEventListener("pointermove", (e) => {
      const r = canvas.getBoundingClientRect();
      const px = e.clientX - r.left, py = e.clientY - r.top;
      setPointer(toPlane(px, py));
      if (hover) showTip(nearest(px, py, 8), e.clientX, e.clientY);
    });
    canvas.addEventListener("pointerleave", () => showTip(-1));
  }
  function nearest(px, py, radius) {
    let best = -1, bestD = radius * radius;
    for (let j = 0; j < N; j++) {
      const [x, y] = toPx(points[2 * j], points[2 * j + 1]);
      const dd = (x - px) * (x - px) + (y - py) * (y - py);
      if (dd < bestD) { best = j; bestD = dd; }
    }
    return best;
  }
  function showTip(j, cx, cy) {
    state.hover = j;
    const tip = $("tip");
    if (j < 0) { tip.style.display = "none"; return; }
    const ctx = sized($("tip-image"), W * sizeFor(84), H * sizeFor(84));
    paint(ctx, tests(j), sizeFor(84));
    $("tip-label").textContent = `test image ${j}` + (labels ? `, label ${labels[j]}` : "");
    tip.style.display = "block";
    tip.style.left = `${cx + 14}px`;
    tip.style.top = `${cy + 14}px`;
  }

  // ------------------------------------------------------------------ the latent map
  function niceTicks(lo, hi) {
    const raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.abs(v) < 1e-12 ? 0 : v);
    return out;
  }
  function drawAxes(ctx, light) {
    ctx.save();
    ctx.font = "10px sans-serif";
    ctx.fillStyle = light ? "#ffffffcc" : "#6b7580";
    ctx.strokeStyle = light ? "#ffffff30" : "#00000012";
    for (const v of niceTicks(X0, X1)) {
      const [x] = toPx(v, Y0);
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, SIZE); ctx.stroke();
      ctx.fillText(String(+v.toPrecision(3)), x + 2, SIZE - 3);
    }
    for (const v of niceTicks(Y0, Y1)) {
      const [, y] = toPx(X0, v);
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(SIZE, y); ctx.stroke();
      ctx.fillText(String(+v.toPrecision(3)), 2, y - 2);
    }
    const names = d <= 2 ? [`${spec.site}[0]`, `${spec.site}[1]`] : ["u₁ (principal axis 1)", "u₂ (principal axis 2)"];
    ctx.fillText(names[0], SIZE - ctx.measureText(names[0]).width - 4, SIZE - 14);
    if (d > 1) { ctx.translate(12, 4); ctx.rotate(Math.PI / 2); ctx.fillText(names[1], 0, 0); }
    ctx.restore();
  }
  function drawContours(ctx, colour, dash) {
    if (!spec.prior) return;
    ctx.save();
    ctx.strokeStyle = colour;
    ctx.setLineDash(dash);
    ctx.lineWidth = 1.2;
    ctx.font = "10px sans-serif";
    ctx.fillStyle = colour;
    for (const level of spec.prior.levels) {
      level.lines.forEach((line, i) => {
        ctx.beginPath();
        for (let p = 0; p < line.length; p += 2) {
          const [x, y] = toPx(line[p], line[p + 1]);
          if (p === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        }
        ctx.stroke();
        if (i === 0 && line.length > 2) {
          const top = line.reduce((best, v, p) => (p % 2 === 1 && v > line[best] ? p : best), 1);
          const [x, y] = toPx(line[top - 1], line[top]);
          ctx.fillText(`${Math.round(level.mass * 100)}%`, x + 3, y - 3);
        }
      });
    }
    ctx.restore();
  }
  function drawMap() {
    const ctx = $("map").getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, SIZE, SIZE);
    drawAxes(ctx, false);
    drawContours(ctx, "#4a525a", [5, 4]);
    ctx.globalAlpha = 0.75;
    for (let j = 0; j < N; j++) {
      const [x, y] = toPx(points[2 * j], points[2 * j + 1]);
      ctx.fillStyle = labels ? labelColours[labels[j] % labelColours.length] : labelColours[0];
      ctx.beginPath(); ctx.arc(x, y, 2.3, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.globalAlpha = 1;
    const legend = $("legend");
    if (labels) {
      const counts = {};
      for (let j = 0; j < N; j++) counts[labels[j]] = (counts[labels[j]] || 0) + 1;
      legend.innerHTML = Object.keys(counts).map((k) =>
        `<span><i style="background:${labelColours[k % labelColours.length]}"></i>${k} (${counts[k]})</span>`).join("");
    }
    legend.insertAdjacentHTML("beforeend", `<span style="color:#5b6570">${N} test images` +
      (spec.prior ? "; dashed: the prior's highest-density regions" : "") + "</span>");
  }
  function crosshair(ctx, colour) {
    const [x, y] = toPx(state.u[0], state.u[1]);
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI);
    ctx.moveTo(x - 12, y); ctx.lineTo(x - 4, y); ctx.moveTo(x + 4, y); ctx.lineTo(x + 12, y);
    ctx.moveTo(x, y - 12); ctx.lineTo(x, y - 4); ctx.moveTo(x, y + 4); ctx.lineTo(x, y + 12);
    ctx.stroke();
  }
  function ring(ctx, j, colour, r) {
    const [x, y] = toPx(points[2 * j], points[2 * j + 1]);
    ctx.strokeStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
  }
  function drawOverlays() {
    const m = $("map-over").getContext("2d");
    m.clearRect(0, 0, SIZE, SIZE);
    ring(m, state.chosen, "#000", 6);
    if (state.hover >= 0) ring(m, state.hover, "#e4572e", 5);
    crosshair(m, "#111");
    const h = $("heat-over").getContext("2d");
    h.clearRect(0, 0, SIZE, SIZE);
    drawContours(h, "#ffffffb0", [4, 4]);
    priorDraws(h);
    ellipses(h, state.chosen);
    crosshair(h, "#ff4d4d");
  }

  // ------------------------------------------------------------------ q(z | x) and the heat map
  function ellipse(j, radius) { // the radius-σ ellipse of q's 2×2 covariance, in pixels
    const a = qCov[3 * j], b = qCov[3 * j + 1], c = qCov[3 * j + 2];
    const tr = (a + c) / 2, det = Math.sqrt(Math.max(((a - c) / 2) ** 2 + b * b, 0));
    const l1 = tr + det, l2 = Math.max(tr - det, 0), angle = Math.atan2(l1 - a, b || 1e-300);
    return { l1: l1, l2: l2, angle: b === 0 && a >= c ? 0 : (b === 0 ? Math.PI / 2 : angle), r: radius };
  }
  function ellipses(ctx, j) {
    const mx = qMean[2 * j], my = qMean[2 * j + 1], sx = SIZE / (X1 - X0), sy = SIZE / (Y1 - Y0);
    const [x, y] = toPx(mx, my);
    for (const [r, colour] of [[1, "#ffffff"], [2, "#ffffff"]]) {
      const e = ellipse(j, r);
      ctx.save();
      ctx.translate(x, y);
      ctx.scale(sx, -sy);
      ctx.rotate(e.angle);
      ctx.beginPath();
      ctx.ellipse(0, 0, Math.max(r * Math.sqrt(e.l1), 1e-9), Math.max(r * Math.sqrt(e.l2), 1e-9), 0, 0, 2 * Math.PI);
      ctx.restore();
      ctx.strokeStyle = "#000"; ctx.lineWidth = 3.2; ctx.setLineDash(r === 2 ? [6, 4] : []); ctx.stroke();
      ctx.strokeStyle = colour; ctx.lineWidth = 1.6; ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.fillStyle = "#fff";
    ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.fill();
  }
  const priorPoints = spec.prior && d === 2 ? array(spec.prior.draws) : null;
  function priorDraws(ctx) {
    if (!priorPoints) return;
    ctx.fillStyle = "#fff"; ctx.strokeStyle = "#000"; ctx.lineWidth = 0.8;
    for (let i = 0; i < priorPoints.length; i += 2) {
      const [x, y] = toPx(priorPoints[i], priorPoints[i + 1]);
      ctx.beginPath(); ctx.arc(x, y, 1.8, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
    }
  }
  function inside2sigma(j, u0, u1) { // Mahalanobis distance² under q's 2×2 covariance ≤ 4
    const a = qCov[3 * j], b = qCov[3 * j + 1], c = qCov[3 * j + 2], det = a * c - b * b;
    const dx = u0 - qMean[2 * j], dy = u1 - qMean[2 * j + 1];
    return (c * dx * dx - 2 * b * dx * dy + a * dy * dy) / det <= 4;
  }

  function heatNodes() { // MLP: the centres of n × n cells; grid: the grid's own nodes
    const n = dec.resolution, xs = [], ys = [];
    for (let i = 0; i < n; i++) {
      const t = dec.mode === "mlp" ? (i + 0.5) / n : i / (n - 1);
      xs.push(X0 + t * (X1 - X0));
      ys.push(Y0 + t * (Y1 - Y0));
    }
    return { n: n, xs: xs, ys: ys };
  }
  function computeHeat(j) {
    const gen = ++state.heatGen, nodes = heatNodes(), n = nodes.n, x = tests(j);
    const values = new Float64Array(n * n);
    api.heatReady = false;
    if (!law().logp) { $("status").textContent = "no heat map: the page cannot score this likelihood"; return; }
    let next = 0;
    function chunk() {
      if (gen !== state.heatGen) return;
      const start = performance.now();
      while (next < n * n && performance.now() - start < 30) {
        const i = Math.floor(next / n), k = next % n;
        values[next] = dec.mode === "mlp" ? logLik(paramsAt([nodes.xs[k], nodes.ys[i]]), x)
          : logLik(gridParams(next), x);
        next += 1;
      }
      $("status").textContent = next < n * n ? `computing log p(x | z): ${Math.round(100 * next / (n * n))}%` : "";
      if (next < n * n) { setTimeout(chunk, 0); return; }
      state.heat = { j: j, values: values, nodes: nodes };
      paintHeat();
      api.heatReady = true;
    }
    chunk();
  }
  function gridParams(node) { // the grid's own parameters at one node (exact)
    const L = laws[lawIndex], out = {};
    for (const [k, a] of Object.entries(L.params)) out[k] = L.consts[k].const ? a : a.subarray(node * D, node * D + D);
    return out;
  }
  const HEAT_SPAN = 200;
  function paintHeat() {
    const { values, nodes } = state.heat, n = nodes.n;
    const sorted = Array.from(values).filter(Number.isFinite).sort((a, b) => a - b);
    // The colours span the top 200 nats at most: a z whose log p(x | z) is lower than that
    // makes x e^-200 times less likely than the best z does, nothing to tell apart.
    const hi = sorted[sorted.length - 1];
    const lo = Math.min(Math.max(sorted[Math.floor(0.05 * (sorted.length - 1))], hi - HEAT_SPAN), hi - 1);
    state.heat.range = [lo, hi];
    const off = document.createElement("canvas");
    const octx = sized(off, n, n), img = octx.createImageData(n, n);
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < n; k++) {
        const t = Math.min(Math.max((values[i * n + k] - lo) / (hi - lo), 0), 1), c = Math.round(t * 255);
        const o = 4 * ((n - 1 - i) * n + k);
        img.data[o] = heatLut[3 * c]; img.data[o + 1] = heatLut[3 * c + 1]; img.data[o + 2] = heatLut[3 * c + 2]; img.data[o + 3] = 255;
      }
    }
    octx.putImageData(img, 0, 0);
    const ctx = $("heat").getContext("2d"), hx = (X1 - X0) / (dec.mode === "mlp" ? n : n - 1);
    const hy = (Y1 - Y0) / (dec.mode === "mlp" ? n : n - 1);
    const [ax, ay] = toPx(nodes.xs[0] - hx / 2, nodes.ys[n - 1] + hy / 2);
    const [bx, by] = toPx(nodes.xs[n - 1] + hx / 2, nodes.ys[0] - hy / 2);
    ctx.fillStyle = "#222"; ctx.fillRect(0, 0, SIZE, SIZE);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, ax, ay, bx - ax, by - ay);
    drawAxes(ctx, true);
    colourbar(lo, hi);
    readout();
  }
  function colourbar(lo, hi) {
    const ctx = $("colourbar").getContext("2d");
    ctx.clearRect(0, 0, 64, SIZE);
    for (let y = 0; y < SIZE - 20; y++) {
      const c = Math.round((1 - y / (SIZE - 21)) * 255);
      ctx.fillStyle = `rgb(${heatLut[3 * c]},${heatLut[3 * c + 1]},${heatLut[3 * c + 2]})`;
      ctx.fillRect(0, y + 10, 14, 1);
    }
    ctx.fillStyle = "#333"; ctx.font = "10px sans-serif";
    for (let t = 0; t <= 4; t++) {
      const v = lo + (hi - lo) * t / 4, y = 10 + (1 - t / 4) * (SIZE - 21);
      ctx.fillText(v.toFixed(Math.abs(hi - lo) < 20 ? 1 : 0), 17, y + 3);
    }
    ctx.fillText("nats", 17, SIZE - 1);
  }

  function readout() {
    const j = state.chosen, dl = $("readout"), rows = [];
    if (labels) rows.push(["label", String(labels[j])]);
    const at = qMean.subarray(2 * j, 2 * j + 2);
    if (law().logp) {
      rows.push([`log p(x | ${spec.site}) at q's mean`, `${logLik(paramsAt(Array.from(at)), tests(j)).toFixed(1)} nats`]);
      if (state.heat && state.heat.j === j) {
        const v = state.heat.values, nodes = state.heat.nodes;
        let best = 0;
        for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
        const bu = [nodes.xs[best % nodes.n], nodes.ys[Math.floor(best / nodes.n)]];
        rows.push(["highest on the heat map", `${v[best].toFixed(1)} nats at (${bu.map((t) => t.toFixed(2)).join(", ")})`]);
        rows.push(["colour range", `${state.heat.range[0].toFixed(0)} … ${state.heat.range[1].toFixed(0)} nats` +
          (state.heat.range[1] - state.heat.range[0] >= HEAT_SPAN - 1e-9 ? " (lower values: the darkest colour)" : "")]);
      }
    }
    if (kl) {
      const k = kl[j];
      rows.push([`KL(q(${spec.site} | x) ‖ p(${spec.site}))`, `${k.toFixed(2)} nats: prior sampling needs about e^KL ≈ ${
        Math.exp(Math.min(k, 700)).toPrecision(2)} draws per draw that lands where q is (a rule of thumb)`]);
    }
    if (spec.prior && d === 2) {
      const n = spec.prior.n, dens = priorDensity, cell = (X1 - X0) * (Y1 - Y0) / ((n - 1) * (n - 1));
      let mass = 0;
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < n; k++) {
          if (inside2sigma(j, X0 + k * (X1 - X0) / (n - 1), Y0 + i * (Y1 - Y0) / (n - 1))) mass += dens[i * n + k] * cell;
        }
      }
      let hits = 0;
      for (let i = 0; i < priorPoints.length; i += 2) if (inside2sigma(j, priorPoints[i], priorPoints[i + 1])) hits += 1;
      rows.push(["a prior draw lands in q's 2σ ellipse", `with probability ≈ ${(100 * mass).toPrecision(2)}% (q itself puts 86% there); of the ${priorPoints.length / 2} prior draws shown (white dots), ${hits}`]);
    }
    dl.innerHTML = "";
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v;
      dl.append(dt, dd);
    }
  }
  const priorDensity = spec.prior ? array(spec.prior.density) : null;

  function choose(j) {
    state.chosen = j;
    const ctx = sized($("chosen"), W * MEAN_SCALE, H * MEAN_SCALE);
    paint(ctx, tests(j), MEAN_SCALE);
    $("chosen-caption").textContent = `test image ${j}` + (labels ? `, label ${labels[j]}` : "") +
      " (as scored: binarized once, seeded)";
    if (dec.variants && labels && dec.variants.values.includes(labels[j])) setVariant(dec.variants.values.indexOf(labels[j]));
    computeHeat(j);
    readout();
    setPointer(Array.from(qMean.subarray(2 * j, 2 * j + 2)));
  }
  function setVariant(i) {
    lawIndex = i;
    const select = $("variant-select");
    if (select) select.value = String(i);
  }
  function variantControl() {
    if (!dec.variants) return;
    const v = dec.variants;
    $("variant").innerHTML = `<label>decode with ${v.name} = <select id="variant-select">` +
      v.values.map((value, i) => `<option value="${i}">${value}</option>`).join("") + "</select></label>";
    $("variant-select").addEventListener("change", (e) => {
      lawIndex = Number(e.target.value);
      computeHeat(state.chosen);
      setPointer(state.u);
    });
  }

  // ------------------------------------------------------------------ start
  function start() {
    $("caption").textContent = spec.caption || "";
    $("heat-caption").textContent = "ellipses: q(z | x), 1σ solid, 2σ dashed" +
      (priorPoints ? `; white dots: ${priorPoints.length / 2} draws z ~ p(z)` : "") +
      (spec.prior ? "; dashed white: the prior's regions" : "") + "; red: the pointer";
    $("notes-list").innerHTML = "";
    for (const note of spec.notes) {
      const li = document.createElement("li");
      li.textContent = note;
      $("notes-list").append(li);
    }
    sized($("mean"), W * MEAN_SCALE, H * MEAN_SCALE);
    drawMap();
    variantControl();
    pointerOn($("map-over"), true);
    pointerOn($("heat-over"), false);
    $("map-over").addEventListener("click", (e) => {
      const r = e.target.getBoundingClientRect(), j = nearest(e.clientX - r.left, e.clientY - r.top, 1e9);
      if (j >= 0) choose(j);
    });
    $("redraw").addEventListener("click", () => paintDraws(paramsAt(state.u)));
    choose(0);
    update();
    api.ready = true;
    api.readyMs = performance.now();
  }
  start();
})();
