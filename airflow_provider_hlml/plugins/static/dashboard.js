// Decision forms, local time stamps and auto-refresh of the HLML dashboard (no dependencies).
(function () {
  "use strict";
  var body = document.body;
  var root = body.getAttribute("data-root") || "";
  var busy = false;

  document.querySelectorAll("td.ts[data-ms]").forEach(function (cell) {
    var ms = parseInt(cell.getAttribute("data-ms"), 10);
    if (ms) { cell.textContent = new Date(ms).toISOString().slice(0, 19).replace("T", " "); }
  });

  function decide(form, approved) {
    var result = form.querySelector(".result");
    var comment = form.querySelector("textarea[name=comment]").value.trim();
    var option = form.querySelector("select[name=reject_option]");
    if (!approved && !comment) {
      result.textContent = "A rejection needs a comment.";
      result.className = "result error";
      return;
    }
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    busy = true;
    result.textContent = "Sending…";
    result.className = "result";
    fetch(root + "/api/approvals/" + encodeURIComponent(form.getAttribute("data-call-id")) + "/decision", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({
        approved: approved,
        comment: comment || null,
        reject_option: (!approved && option && option.value) ? option.value : null
      })
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) {
          var detail = data && data.detail;
          throw new Error(typeof detail === "string" ? detail : (JSON.stringify(detail) || resp.statusText));
        }
        return data;
      });
    }).then(function (data) {
      // A request with approval rules stays pending until every rule is met: the answer was
      // recorded, and the message says how far the rules are ("Reviewers 1 of 2").
      result.textContent = data.message || ((data.status === "approved" ? "Approved" : data.status === "pending" ? "Recorded" : "Rejected") + " as " + (data.responded_by || "you") + ".");
      result.className = "result done" + (data.status === "pending" ? " partial" : "");
      var card = form.closest("article");
      if (card) { card.setAttribute("data-status", data.status); }
      busy = false;
      setTimeout(function () { window.location.reload(); }, 1200);
    }).catch(function (err) {
      result.textContent = err.message;
      result.className = "result error";
      buttons.forEach(function (b) { b.disabled = false; });
      busy = false;
    });
  }

  document.querySelectorAll("form.decide").forEach(function (form) {
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
    form.querySelectorAll("button[data-approved]").forEach(function (button) {
      button.addEventListener("click", function () { decide(form, button.getAttribute("data-approved") === "true"); });
    });
  });

  var seconds = parseInt(body.getAttribute("data-refresh-seconds") || "0", 10);
  if (seconds > 0) {
    setInterval(function () {
      var active = document.activeElement;
      var typing = active && (active.tagName === "TEXTAREA" || active.tagName === "INPUT" || active.tagName === "SELECT");
      var drafted = Array.prototype.some.call(document.querySelectorAll("form.decide textarea"), function (t) { return t.value; });
      if (!busy && !typing && !drafted && document.visibilityState !== "hidden") { window.location.reload(); }
    }, seconds * 1000);
  }
})();
