// The analysts' console (/engine): the dashboard's figures refreshed in place, and a box that
// ticks every box of a selection. Everything else is plain forms and links.
const REFRESH_MS = 5000;

const dashboard = document.getElementById("dashboard");
if (dashboard) {
  const refresh = async () => {
    try {
      const response = await fetch(dashboard.dataset.refresh, {credentials: "same-origin", redirect: "manual"});
      if (response.ok) {
        dashboard.innerHTML = await response.text();
        document.body.classList.remove("offline");
      } else {
        document.body.classList.add("offline");
      }
    } catch {
      document.body.classList.add("offline");
    }
  };
  setInterval(refresh, REFRESH_MS);
}

const all = document.getElementById("select-all");
if (all) {
  all.addEventListener("change", () => {
    for (const box of all.form.querySelectorAll("input[name=id]")) box.checked = all.checked;
  });
}

// Every action has a key: Alt with the key an element names in its data-key (and announces in
// aria-keyshortcuts) clicks it: the tabs Alt+1…4, reprocess Alt+R, download Alt+E, send again
// Alt+Y; on the bench try Alt+T, save Alt+S, download Alt+D.
document.addEventListener("keydown", (event) => {
  if (!event.altKey || event.ctrlKey || event.metaKey) return;
  const key = event.code.replace(/^(Digit|Key)/, "").toLowerCase();
  const target = document.querySelector(`[data-key="${key}"]`);
  if (target) {
    event.preventDefault();
    target.click();
  }
});
