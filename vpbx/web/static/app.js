// vpbx cabinet behaviour kept out of inline attributes (the Content-Security-Policy forbids inline script).
document.addEventListener("DOMContentLoaded", () => {
  const token = document.body.dataset.csrf;
  document.body.addEventListener("htmx:configRequest", (e) => {
    if (token) e.detail.headers["X-CSRF-Token"] = token;
  });
  // copy buttons: data-copy names the element whose text goes to the clipboard
  document.body.addEventListener("click", (e) => {
    const button = e.target.closest("[data-copy]");
    const source = button && document.getElementById(button.dataset.copy);
    if (source && navigator.clipboard) navigator.clipboard.writeText(source.textContent.trim());
  });
  // switches that ask for a confirmation: changing one submits its form (e.g. «Интеграция с системой amoCRM»)
  document.body.addEventListener("change", (e) => {
    if (e.target.matches("[data-submit-on-change]") && e.target.form) e.target.form.submit();
  });
});
