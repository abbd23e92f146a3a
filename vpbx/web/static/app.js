// vpbx cabinet behaviour kept out of inline attributes (the Content-Security-Policy forbids inline script).
document.addEventListener("DOMContentLoaded", () => {
  const token = document.body.dataset.csrf;
  document.body.addEventListener("htmx:configRequest", (e) => {
    if (token) e.detail.headers["X-CSRF-Token"] = token;
  });
});
