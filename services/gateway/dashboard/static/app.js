// Funnelstream dashboard: the follow-up actions, sent to the API with the signed-in key as the
// Bearer key (the same call any client makes). Hand-written; no libraries.
(function () {
  "use strict";
  var COOKIE = "funnelstream_key";

  function apiKey() {
    var parts = document.cookie.split("; ");
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === COOKIE) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return null;
  }

  function notice(text, bad) {
    var box = document.getElementById("notice");
    if (!box) return;
    box.textContent = text;
    box.className = bad ? "bad" : "";
  }

  function when(iso) {
    var d = new Date(iso);
    if (isNaN(d)) return iso || "–";
    return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  async function call(method, path, body) {
    var response = await fetch(path, {
      method: method,
      headers: { "Authorization": "Bearer " + apiKey(), "Content-Type": "application/json" },
      body: JSON.stringify(body)
    });
    var data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      var error = data && data.error;
      throw new Error(error && error.message ? error.message + " (HTTP " + response.status + ")" : "The API answered HTTP " + response.status + ".");
    }
    return data;
  }

  function show(row, followup) {
    row.className = "status-" + followup.status;
    var status = row.querySelector('[data-field="status"] .pill');
    if (status) status.textContent = followup.status;
    var due = row.querySelector('[data-field="due_at"]');
    if (due) due.textContent = when(followup.due_at);
    var assignee = row.querySelector('[data-field="assignee"]');
    if (assignee) assignee.textContent = followup.assignee || "unassigned";
    if (followup.status === "done" || followup.status === "cancelled") {
      var actions = row.querySelector(".actions");
      if (actions) actions.textContent = "";
    }
  }

  async function act(button) {
    var row = button.closest("[data-followup-id]");
    var id = row.getAttribute("data-followup-id");
    var path = "/api/followups/" + encodeURIComponent(id) + "/" + button.getAttribute("data-action");
    var body;
    if (button.getAttribute("data-action") === "complete") {
      body = { outcome: row.querySelector("[data-outcome]").value };
    } else if (button.getAttribute("data-action") === "assign") {
      body = { assignee: row.querySelector("[data-assignee]").value.trim() || null };
    } else {
      var days = Number(row.querySelector("[data-snooze-days]").value);
      body = { until: new Date(Date.now() + days * 86400000).toISOString() };
    }
    button.disabled = true;
    try {
      var followup = await call("POST", path, body);
      show(row, followup);
      notice({
        complete: "Follow-up completed (" + body.outcome + ").",
        snooze: "Follow-up snoozed until " + when(followup.due_at) + ".",
        assign: "Follow-up assigned to " + (followup.assignee || "nobody") + "."
      }[button.getAttribute("data-action")]);
    } catch (error) {
      notice("Could not " + button.getAttribute("data-action") + " the follow-up: " + error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button) act(button);
  });

  // The customer box in the header opens /app/customers/<id> (the id may hold any character).
  var find = document.querySelector("[data-customer-search]");
  if (find) find.addEventListener("submit", function (event) {
    var id = find.querySelector("input").value.trim();
    event.preventDefault();
    if (id) window.location.href = "/app/customers/" + encodeURIComponent(id);
  });
})();
