/* The share page: makes a link through POST /api/links, lists the study's links, revokes one. */
(function () {
  'use strict';
  var form = document.getElementById('share');
  if (!form) {
    return;
  }
  var texts = JSON.parse(document.getElementById('share-texts').textContent);
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';
  var study = form.dataset.study;
  var error = document.getElementById('error');
  var tbody = document.querySelector('#links tbody');

  function local(iso) {
    var d = new Date(iso);
    var pad = function (n) { return String(n).padStart(2, '0'); };
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + pad(d.getHours()) + ':' +
      pad(d.getMinutes());
  }

  function fail(answer) {
    error.hidden = false;
    var detail = answer && answer.detail;
    error.textContent = texts.failed.replace('{reason}', typeof detail === 'string' ? detail : JSON.stringify(detail));
  }

  function send(url, body) {
    return fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(body || {}),
      credentials: 'same-origin',
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) {
          throw answer;
        }
        return answer;
      });
    });
  }

  function list() {
    fetch('/api/links?study=' + encodeURIComponent(study), { credentials: 'same-origin' })
      .then(function (response) { return response.json(); })
      .then(function (rows) {
        tbody.textContent = '';
        rows.forEach(function (row) {
          var tr = document.createElement('tr');
          var state = row.revoked_at ? texts.revoked : new Date(row.expires_at) < new Date() ? texts.expired : texts.active;
          [texts[row.purpose] || row.purpose, row.created_by, local(row.created_at), local(row.expires_at), state]
            .forEach(function (text) {
              var td = document.createElement('td');
              td.textContent = text;
              tr.appendChild(td);
            });
          var cell = document.createElement('td');
          if (state === texts.active) {
            var button = document.createElement('button');
            button.type = 'button';
            button.className = 'revoke';
            button.textContent = texts.revoke;
            button.addEventListener('click', function () {
              send('/api/links/' + encodeURIComponent(row.id) + '/revoke').then(list, fail);
            });
            cell.appendChild(button);
          }
          tr.appendChild(cell);
          tbody.appendChild(tr);
        });
      });
  }

  // Alt+key for each action (as the page's <kbd> hints say), whatever the browser does with accesskey
  var keys = {
    'n': function () { form.requestSubmit(); },
    'c': function () { document.getElementById('copy').click(); },
    'h': function () { form.elements.hours.focus(); },
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
    error.hidden = true;
    send('/api/links', { study_instance_uid: study, purpose: form.elements.purpose.value,
                         hours: Number(form.elements.hours.value) })
      .then(function (answer) {
        document.getElementById('made').hidden = false;
        var url = document.getElementById('url');
        url.value = answer.url;
        url.focus();
        url.select();
        var qr = document.getElementById('qr');
        qr.querySelector('img').src = '/api/links/' + encodeURIComponent(answer.id) + '/qr.svg';
        qr.hidden = false;
        list();
      }, fail);
  });

  document.getElementById('copy').addEventListener('click', function () {
    var url = document.getElementById('url');
    url.select();
    if (navigator.clipboard) {
      navigator.clipboard.writeText(url.value).catch(function () { document.execCommand('copy'); });
    } else {
      document.execCommand('copy');
    }
  });

  list();
})();
