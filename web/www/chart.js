// A line chart on a canvas, for the browser peer's page and the run's dashboard: `points` are
// {x, y}; non-finite ys are skipped. The axes say the range; `xLabel` formats an x.
export function drawLine(canvas, points, { color = "#1565c0", xLabel = (x) => String(x), yDigits = 2 } = {}) {
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const pts = points.filter((p) => Number.isFinite(p.y) && Number.isFinite(p.x));
  if (pts.length < 2) return;
  const lo = Math.min(...pts.map((p) => p.y));
  const hi = Math.max(...pts.map((p) => p.y));
  const x0 = pts[0].x;
  const x1 = pts[pts.length - 1].x;
  const x = (v) => 40 + ((v - x0) / Math.max(1e-9, x1 - x0)) * (canvas.width - 50);
  const y = (v) => 10 + (1 - (v - lo) / Math.max(1e-9, hi - lo)) * (canvas.height - 40);
  g.fillStyle = "#444";
  g.font = "12px sans-serif";
  g.fillText(hi.toFixed(yDigits), 2, 14);
  g.fillText(lo.toFixed(yDigits), 2, canvas.height - 30);
  g.fillText(xLabel(x0), 40, canvas.height - 8);
  g.fillText(xLabel(x1), canvas.width - 70, canvas.height - 8);
  g.strokeStyle = color;
  g.lineWidth = 2;
  g.beginPath();
  pts.forEach((p, i) => (i ? g.lineTo(x(p.x), y(p.y)) : g.moveTo(x(p.x), y(p.y))));
  g.stroke();
}
