// vpbx cabinet: the statistics page's charts, drawn by chart.js from the page's JSON block (no inline script:
// the Content-Security-Policy forbids it). Runs on a full page load and when htmx swaps the page in.
(() => {
  const data = JSON.parse(document.getElementById("stats-data").textContent);
  const css = getComputedStyle(document.documentElement);
  const green = css.getPropertyValue("--pico-ins-color").trim() || "#2e7d32";
  const red = css.getPropertyValue("--pico-del-color").trim() || "#c62828";
  const blue = css.getPropertyValue("--pico-primary").trim() || "#1565c0";
  const stackedScales = { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } };

  function bars(id, series, aspectRatio) {
    return new Chart(document.getElementById(id), {
      type: "bar",
      data: {
        labels: series.labels,
        datasets: [
          { label: data.labels.answered, data: series.answered, backgroundColor: green },
          { label: data.labels.missed, data: series.missed, backgroundColor: red },
        ],
      },
      options: { responsive: true, aspectRatio, scales: stackedScales },
    });
  }

  function draw() {
    // people who asked their system for less motion get the charts without the growing animation
    if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) Chart.defaults.animation = false;
    for (const id of ["chart-hours", "chart-days", "chart-state", "chart-users"]) {
      const old = Chart.getChart(id);
      if (old) old.destroy();
    }
    bars("chart-hours", data.hours, 2);
    bars("chart-days", data.days, 3);
    new Chart(document.getElementById("chart-state"), {
      type: "doughnut",
      data: {
        labels: [data.labels.answered, data.labels.missed],
        datasets: [{ data: [data.total.answered, data.total.missed], backgroundColor: [green, red] }],
      },
      options: { responsive: true, aspectRatio: 2 },
    });
    new Chart(document.getElementById("chart-users"), {
      type: "bar",
      data: {
        labels: data.users.labels,
        datasets: [
          { label: data.labels.answered, data: data.users.answered, backgroundColor: green, yAxisID: "y" },
          { label: data.labels.talk, data: data.users.talk_min, backgroundColor: blue, yAxisID: "talk" },
        ],
      },
      options: {
        responsive: true,
        aspectRatio: 3,
        scales: {
          y: { beginAtZero: true, position: "left", ticks: { precision: 0 } },
          talk: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } },
        },
      },
    });
  }

  if (window.Chart) {
    draw();
  } else {
    // swapped in by htmx: the library's script element may still be loading
    document.querySelector('script[src="/assets/chart.js"]').addEventListener("load", draw, { once: true });
  }
})();
