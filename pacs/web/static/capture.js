// The capture page's thumbnails: what was picked, drawn before it is sent (nothing is sent
// from here; the form posts the files). Images and videos are shown from the browser's own
// copy (object URLs); a PDF is shown by its name.
(function () {
  "use strict";
  var input = document.getElementById("files");
  var list = document.getElementById("previews");
  if (!input || !list) { return; }
  var urls = [];
  input.addEventListener("change", function () {
    urls.forEach(function (url) { URL.revokeObjectURL(url); });
    urls = [];
    list.textContent = "";
    Array.prototype.forEach.call(input.files, function (file) {
      var item = document.createElement("li");
      var type = file.type || "";
      var shown;
      if (type.indexOf("image/") === 0 && type !== "image/tiff") {
        shown = document.createElement("img");
        shown.alt = file.name;
      } else if (type.indexOf("video/") === 0) {
        shown = document.createElement("video");
        shown.muted = true;
        shown.preload = "metadata";
      } else {
        shown = document.createElement("span");
        shown.className = "doc";
        shown.textContent = type === "application/pdf" ? list.dataset.pdf : type || "?";
      }
      if (shown.tagName !== "SPAN") {
        var url = URL.createObjectURL(file);
        urls.push(url);
        shown.src = url;
      }
      shown.classList.add("thumb");
      var name = document.createElement("span");
      name.className = "file-name";
      name.textContent = file.name;
      item.appendChild(shown);
      item.appendChild(name);
      list.appendChild(item);
    });
  });
}());
