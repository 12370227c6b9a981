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
