// The web UI's only script: a second confirmation before a delete is sent. Everything
// works without it (the confirmation page is the first confirmation).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("delete-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      var text = document.getElementById("confirm-text");
      if (!window.confirm((text ? text.textContent.trim() : "Delete?") + "\n\nThis cannot be undone from here.")) {
        event.preventDefault();
      }
    });
  }
});
