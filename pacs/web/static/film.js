/* The film page: the form sent to POST /api/film as JSON, the printer's answer shown. */
(function () {
  'use strict';
  var form = document.getElementById('film');
  if (!form) {
    return;
  }
  var result = document.getElementById('result');
  var texts = JSON.parse(document.getElementById('film-texts').textContent);
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';

  function say(text, state) {
    result.hidden = false;
    result.textContent = text;
    result.dataset.state = state;  // printing, printed, failed
    result.className = 'message ' + (state === 'failed' ? 'error' : 'note');
  }

  // Alt+key for each action (as the page's <kbd> hints say), whatever the browser does with accesskey
  var keys = {
    'p': function () { form.requestSubmit(); },
    'l': function () { form.elements.layout.focus(); },
    'w': function () { form.elements.window.focus(); },
  };
  document.addEventListener('keydown', function (event) {
    var action = event.altKey && !event.ctrlKey && !event.metaKey && keys[String(event.key).toLowerCase()];
    if (action) {
      event.preventDefault();
      action();
    }
  });

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var series = Array.prototype.map.call(form.querySelectorAll('input[name="series"]:checked'),
                                          function (box) { return box.value; });
    if (!series.length) {
      say(texts.none, 'failed');
      return;
    }
    var body = {
      study_instance_uid: form.dataset.study,
      series: series,
      layout: form.elements.layout.value,
      copies: Number(form.elements.copies.value || 1),
      annotate: form.elements.annotate.checked,
      printer: form.elements.printer.value,
    };
    if (form.elements.window.value) {
      var parts = form.elements.window.value.split(',');
      body.window = { center: Number(parts[0]), width: Number(parts[1]) };
    }
    var button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    say(texts.printing, 'printing');
    fetch('/api/film', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(body),
      credentials: 'same-origin',
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (response.ok) {
          say(texts.printed.replace('{films}', answer.films).replace('{images}', answer.images)
            .replace('{printer}', answer.printer), 'printed');
        } else {
          var detail = typeof answer.detail === 'string' ? answer.detail : JSON.stringify(answer.detail);
          say(texts.failed.replace('{reason}', detail), 'failed');
        }
      });
    }).catch(function (error) {
      say(texts.failed.replace('{reason}', String(error)), 'failed');
    }).finally(function () {
      button.disabled = false;
    });
  });
})();
