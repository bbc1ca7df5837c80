/* 设备指纹 (device id) for risk control: fills every hidden `device_id` field of the page with the visitor id of the
 * self-hosted FingerprintJS 5 (/static/vendor/fingerprintjs/fp.min.js, MIT). Monitoring is off, so nothing is sent
 * to any other origin. A form submitted before the id is ready waits for it (at most WAIT_MS), then goes anyway:
 * the device id is a risk signal, never a condition for buying or signing in. */
(function () {
  "use strict";
  var WAIT_MS = 1500;
  var fields = function () { return document.querySelectorAll("input[name=device_id]"); };
  var ready = (window.FingerprintJS
    ? window.FingerprintJS.load({monitoring: false}).then(function (agent) { return agent.get(); })
        .then(function (result) { return result.visitorId; })
    : Promise.reject(new Error("FingerprintJS missing")))
    .then(function (id) {
      fields().forEach(function (field) { if (!field.value) { field.value = id; } });
      return id;
    })
    .catch(function () { return ""; });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var field = form.querySelector && form.querySelector("input[name=device_id]");
    if (!field || field.value || form.dataset.deviceWaited) { return; }
    event.preventDefault();
    form.dataset.deviceWaited = "1";
    var timeout = new Promise(function (resolve) { setTimeout(resolve, WAIT_MS); });
    Promise.race([ready, timeout]).then(function () { form.submit(); });
  }, true);
})();
