// The capture page: thumbnails of what was picked, and the camera (getUserMedia for the picture,
// a canvas for a photo, MediaRecorder for a video) adding what it takes to the same list, so every
// file is checked before it is sent. The form posts the files: what the camera took is put into
// the file field when the form is sent (a DataTransfer), so the server sees one upload of them all.
// Images and videos are shown from the browser's own copy (object URLs); a PDF by its name.
(function () {
  "use strict";
  var input = document.getElementById("files");
  var list = document.getElementById("previews");
  var form = document.getElementById("capture-form");
  if (!input || !list || !form) { return; }
  var PHOTO_QUALITY = 0.92;  // JPEG from the canvas: baseline, kept as it is by the archive
  var MAX_RECORDING_MS = 5 * 60 * 1000;  // a short video; longer ones come from the device's own files
  var picked = [];  // object URLs of the picked files' thumbnails
  var captured = [];  // {file, url, item} taken by the camera

  function thumbnail(file, url) {
    var type = file.type || "";
    var shown;
    if (type.indexOf("image/") === 0 && type !== "image/tiff") {
      shown = document.createElement("img");
      shown.alt = file.name;
    } else if (type.indexOf("video/") === 0) {
      shown = document.createElement("video");
      shown.muted = true;
      shown.preload = "metadata";
      shown.controls = true;
    } else {
      shown = document.createElement("span");
      shown.className = "doc";
      shown.textContent = type === "application/pdf" ? list.dataset.pdf : type || "?";
    }
    if (shown.tagName !== "SPAN") { shown.src = url; }
    shown.classList.add("thumb");
    var item = document.createElement("li");
    var name = document.createElement("span");
    name.className = "file-name";
    name.textContent = file.name;
    item.appendChild(shown);
    item.appendChild(name);
    return item;
  }

  function showPicked() {
    picked.forEach(function (url) { URL.revokeObjectURL(url); });
    picked = [];
    Array.prototype.forEach.call(list.querySelectorAll("li.picked"), function (li) { li.remove(); });
    var first = list.firstChild;
    Array.prototype.forEach.call(input.files, function (file) {
      var url = URL.createObjectURL(file);
      picked.push(url);
      var item = thumbnail(file, url);
      item.classList.add("picked");
      list.insertBefore(item, first);
    });
  }
  input.addEventListener("change", showPicked);

  function addCaptured(blob, name) {
    var file = new File([blob], name, {type: blob.type, lastModified: Date.now()});
    var url = URL.createObjectURL(file);
    var item = thumbnail(file, url);
    item.classList.add("captured");
    var remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove link";
    remove.textContent = list.dataset.remove;
    var entry = {file: file, url: url, item: item};
    remove.addEventListener("click", function () {
      URL.revokeObjectURL(url);
      captured = captured.filter(function (e) { return e !== entry; });
      item.remove();
    });
    item.appendChild(remove);
    captured.push(entry);
    list.appendChild(item);
  }

  // What the camera took goes with the picked files when the form is sent.
  form.addEventListener("submit", function () {
    if (!captured.length) { return; }
    var all = new DataTransfer();
    Array.prototype.forEach.call(input.files, function (file) { all.items.add(file); });
    captured.forEach(function (entry) { all.items.add(entry.file); });
    input.files = all.files;
  });

  // -- the camera --------------------------------------------------------------------------
  var camera = document.getElementById("camera");
  if (!camera || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) { return; }
  camera.hidden = false;
  var view = document.getElementById("camera-view");
  var start = document.getElementById("camera-start");
  var photo = document.getElementById("camera-photo");
  var record = document.getElementById("camera-record");
  var stop = document.getElementById("camera-stop");
  var state = document.getElementById("camera-state");
  var stream = null;
  var recorder = null;
  var limit = null;

  function stamp() {
    var now = new Date();
    function two(n) { return String(n).padStart(2, "0"); }
    return now.getFullYear() + two(now.getMonth() + 1) + two(now.getDate()) + "-" + two(now.getHours()) +
      two(now.getMinutes()) + two(now.getSeconds()) + "-" + String(now.getMilliseconds()).padStart(3, "0");
  }

  function videoType() {
    // An MP4 (H.264) recording is kept as it is; WebM (VP8/VP9) is made H.264 by the server.
    var kinds = ["video/mp4;codecs=avc1", "video/mp4", "video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"];
    for (var i = 0; i < kinds.length; i++) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(kinds[i])) { return kinds[i]; }
    }
    return "";
  }

  start.addEventListener("click", function () {
    if (stream) { return; }
    navigator.mediaDevices.getUserMedia({
      video: {facingMode: "environment", width: {ideal: 1920}, height: {ideal: 1080}}, audio: false
    }).then(function (got) {
      stream = got;
      view.srcObject = stream;
      view.hidden = false;
      photo.disabled = false;
      record.disabled = !window.MediaRecorder;
      start.disabled = true;
      state.textContent = "";
    }).catch(function (error) {
      state.textContent = camera.dataset.failed + (error && error.message ? error.message : String(error));
    });
  });

  photo.addEventListener("click", function () {
    if (!stream || !view.videoWidth) { return; }
    var canvas = document.createElement("canvas");
    canvas.width = view.videoWidth;
    canvas.height = view.videoHeight;
    canvas.getContext("2d").drawImage(view, 0, 0);
    canvas.toBlob(function (blob) {
      if (blob) { addCaptured(blob, "camera-" + stamp() + ".jpg"); }
    }, "image/jpeg", PHOTO_QUALITY);
  });

  record.addEventListener("click", function () {
    if (!stream || recorder) { return; }
    var type = videoType();
    var chunks = [];
    recorder = type ? new MediaRecorder(stream, {mimeType: type}) : new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", function (event) {
      if (event.data && event.data.size) { chunks.push(event.data); }
    });
    recorder.addEventListener("stop", function () {
      var mime = (recorder.mimeType || type || "video/webm").split(";")[0];
      var blob = new Blob(chunks, {type: mime});
      recorder = null;
      clearTimeout(limit);
      record.disabled = false;
      stop.disabled = true;
      photo.disabled = false;
      state.textContent = "";
      if (blob.size) { addCaptured(blob, "camera-" + stamp() + (mime === "video/mp4" ? ".mp4" : ".webm")); }
    });
    recorder.start(1000);
    limit = setTimeout(function () { if (recorder) { recorder.stop(); } }, MAX_RECORDING_MS);
    record.disabled = true;
    stop.disabled = false;
    state.textContent = camera.dataset.recording;
  });

  stop.addEventListener("click", function () {
    if (recorder && recorder.state !== "inactive") { recorder.stop(); }
  });

  // Every action has a key: Alt with the key a button names in its data-key clicks it.
  document.addEventListener("keydown", function (event) {
    if (!event.altKey || event.ctrlKey || event.metaKey) { return; }
    var key = event.code.replace(/^(Digit|Key)/, "").toLowerCase();
    var target = document.querySelector('#capture-form [data-key="' + key + '"]');
    if (target && !target.disabled) {
      event.preventDefault();
      target.click();
    }
  });

  window.addEventListener("pagehide", function () {
    if (stream) { stream.getTracks().forEach(function (track) { track.stop(); }); }
  });
}());
