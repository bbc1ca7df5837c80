// Asks before a form with data-confirm="..." is sent (or a button with data-confirm is clicked). Replaces inline
// onsubmit / onclick handlers, which the Content-Security-Policy (no 'unsafe-inline' scripts) does not run.
(function () {
  document.addEventListener("submit", function (event) {
    var form = event.target, text = form.getAttribute && form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) { event.preventDefault(); }
  }, true);
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-confirm], input[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
  }, true);
})();
