// vpbx cabinet: the autoinformer report's chart of attempts and outcomes per 15 minutes, drawn by chart.js
// from the summary's JSON block (the Content-Security-Policy forbids inline script). Drawn on load, when htmx
// swaps the page in, and again each time htmx refreshes the summary (every 5 s while the campaign is live).
(() => {
  const COLORS = {
    success: "#2e7d32", answered_incomplete: "#9e9d24", opted_out: "#6a1b9a", machine: "#5d4037",
    busy: "#ef6c00", no_answer: "#90a4ae", rejected: "#c62828", invalid_number: "#ad1457", failed: "#b71c1c",
    in_progress: "#1565c0",
  };

  function draw() {
    const source = document.getElementById("ai-chart-data");
    const canvas = document.getElementById("ai-chart");
    if (!source || !canvas || !window.Chart) return;
    const data = JSON.parse(source.textContent);
    const old = Chart.getChart(canvas);
    if (old) old.destroy();
    if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) Chart.defaults.animation = false;
    canvas.dataset.buckets = String(data.labels.length);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: Object.entries(data.series).map(([key, values]) => ({
          label: data.names[key] || key, data: values, backgroundColor: COLORS[key] || "#607d8b",
        })),
      },
      options: {
        responsive: true, aspectRatio: 3, animation: false,
        plugins: { title: { display: true, text: data.title } },
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
      },
    });
  }

  if (!window.vpbxAiReport) {
    window.vpbxAiReport = true;
    // whichever element htmx reports, a settled page with a summary gets its chart (re)drawn
    document.body.addEventListener("htmx:afterSettle", () => draw());
  }
  if (window.Chart) {
    draw();
  } else {
    const lib = document.querySelector('script[src="/assets/chart.js"]');
    if (lib) lib.addEventListener("load", draw, { once: true });
  }
})();
