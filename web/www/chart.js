// Line charts on a canvas, for the browser peer's page and the run's dashboard: `points` are
// {x, y}; non-finite ones are skipped. The axes say the range; `xLabel` formats an x.
export function drawLine(canvas, points, { color = "#1565c0", xLabel = (x) => String(x), yDigits = 2 } = {}) {
  drawLines(canvas, [{ points, color }], { xLabel, yDigits });
}

// Several series on one pair of axes, each {points, color, label}; labelled series get a legend.
export function drawLines(canvas, series, { xLabel = (x) => String(x), yDigits = 2 } = {}) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const lines = series.map((s) => ({ ...s, pts: s.points.filter((p) => Number.isFinite(p.y) && Number.isFinite(p.x)) }));
  const all = lines.flatMap((l) => l.pts);
  if (all.length < 2) return;
  const lo = Math.min(...all.map((p) => p.y));
  const hi = Math.max(...all.map((p) => p.y));
  const x0 = Math.min(...all.map((p) => p.x));
  const x1 = Math.max(...all.map((p) => p.x));
  const x = (v) => 40 + ((v - x0) / Math.max(1e-9, x1 - x0)) * (canvas.width - 50);
  const y = (v) => 10 + (1 - (v - lo) / Math.max(1e-9, hi - lo)) * (canvas.height - 40);
  g.fillStyle = "#444";
  g.font = "12px sans-serif";
  g.fillText(hi.toFixed(yDigits), 2, 14);
  g.fillText(lo.toFixed(yDigits), 2, canvas.height - 30);
  g.fillText(xLabel(x0), 40, canvas.height - 8);
  const last = xLabel(x1);
  g.fillText(last, canvas.width - g.measureText(last).width - 6, canvas.height - 8);
  g.lineWidth = 2;
  lines.forEach((l, k) => {
    g.strokeStyle = l.color;
    g.beginPath();
    l.pts.forEach((p, i) => (i ? g.lineTo(x(p.x), y(p.y)) : g.moveTo(x(p.x), y(p.y))));
    g.stroke();
    if (l.label) {
      g.fillStyle = l.color;
      g.fillText(l.label, canvas.width - 160, 16 + 16 * k);
    }
  });
}
