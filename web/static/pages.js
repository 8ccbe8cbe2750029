/* The pages' little bit of behaviour: tabs, the confirmation dialog, a new card through
   Stripe.js, and following a purchase. Everything works by keyboard; without JavaScript
   the pages still render (saved-card payments, and a refresh while a purchase runs). */
(function () {
  "use strict";

  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  /* -- tabs (WAI-ARIA tabs pattern: arrows, Home, End) ------------------------------ */
  document.querySelectorAll("[data-tabs]").forEach(function (box) {
    var tabs = Array.prototype.slice.call(box.querySelectorAll('[role="tab"]'));
    function select(tab, focus) {
      tabs.forEach(function (other) {
        var on = other === tab;
        other.setAttribute("aria-selected", on ? "true" : "false");
        other.tabIndex = on ? 0 : -1;
        document.getElementById(other.getAttribute("aria-controls")).hidden = !on;
      });
      if (focus) tab.focus();
    }
    tabs.forEach(function (tab, index) {
      tab.addEventListener("click", function () { select(tab, false); });
      tab.addEventListener("keydown", function (event) {
        var next = null;
        if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
        if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
        if (event.key === "Home") next = tabs[0];
        if (event.key === "End") next = tabs[tabs.length - 1];
        if (next) { event.preventDefault(); select(next, true); }
      });
    });
    var chosen = tabs.filter(function (t) { return t.getAttribute("aria-selected") === "true"; })[0];
    if (chosen) select(chosen, false);
  });

  /* -- the confirmation dialog: modal, focus in on open and back on close ------------ */
  document.querySelectorAll("dialog[data-modal]").forEach(function (dialog) {
    if (typeof dialog.showModal !== "function") return;  // stays open, inline
    if (dialog.open) dialog.close();
    dialog.showModal();
    var first = dialog.querySelector("[autofocus]") || dialog.querySelector("button");
    if (first) first.focus();
    dialog.addEventListener("close", function () {
      var back = document.getElementById("active-seats");
      if (back) { back.focus(); back.select && back.select(); }
    });
  });

  /* -- Stripe.js ---------------------------------------------------------------------- */
  var stripeInstance = null;
  function stripeFor(holder) {
    if (stripeInstance) return stripeInstance;
    var key = holder.getAttribute("data-stripe-key");
    if (!key || typeof window.Stripe !== "function") return null;
    stripeInstance = window.Stripe(key, { locale: holder.getAttribute("data-locale") || "auto" });
    return stripeInstance;
  }

  function say(node, text) { if (node) node.textContent = text || ""; }

  /* -- paying: the saved card submits as is; a new card is saved with a SetupIntent ---- */
  document.querySelectorAll("form[data-payment-form]").forEach(function (form) {
    var problem = form.querySelector("[data-pay-problem]");
    var progress = form.querySelector("[data-pay-progress]");
    var button = form.querySelector("[data-pay-button]");
    var area = form.querySelector("[data-new-card]");
    var newChoice = form.querySelector('input[name="card"][value="new"]');
    var newOnly = form.hasAttribute("data-new-card-only");  // saving a card: no saved-card choice
    function wantsNew() { return newOnly || Boolean(newChoice && newChoice.checked); }
    var errors = JSON.parse(form.getAttribute("data-card-errors") || "{}");
    var names = JSON.parse(form.getAttribute("data-field-names") || "{}");
    var card = null;

    function showArea() {
      if (area) area.hidden = !wantsNew();
    }
    form.querySelectorAll('input[name="card"]').forEach(function (radio) {
      radio.addEventListener("change", function () { say(problem, ""); showArea(); });
    });

    if (area) {
      var stripe = stripeFor(form);
      if (!stripe) {
        say(problem, form.getAttribute("data-unavailable"));
        if (newChoice) newChoice.disabled = true;
        if (newOnly && button) button.disabled = true;
        area.hidden = true;
      } else {
        card = stripe.elements().create("card");
        card.mount(form.querySelector(".card-element"));
        /* The stand-in draws plain inputs: give each one a name a screen reader says. */
        form.querySelectorAll(".card-element input").forEach(function (input) {
          var name = names[input.getAttribute("placeholder")];
          if (name && !input.getAttribute("aria-label")) input.setAttribute("aria-label", name);
        });
        showArea();
      }
    }

    function fail(error) {
      var text = (error && error.code && errors[error.code]) || (error && error.message) || "";
      say(progress, "");
      say(problem, text);
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }

    form.addEventListener("submit", function (event) {
      say(problem, "");
      if (!wantsNew() || form.getAttribute("data-ready") === "1") {
        button.disabled = true;
        say(progress, form.getAttribute("data-paying"));
        return;  // the saved card: a plain form post
      }
      event.preventDefault();
      var stripe = stripeFor(form);
      if (!stripe || !card) { fail({ message: form.getAttribute("data-unavailable") }); return; }
      button.disabled = true;
      form.setAttribute("aria-busy", "true");
      say(progress, form.getAttribute("data-checking"));
      fetch(form.getAttribute("data-setup-url"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrf, "Accept": "application/json" }
      }).then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw body;
          return stripe.confirmCardSetup(body.client_secret, { payment_method: { card: card } });
        });
      }).then(function (result) {
        if (result.error) throw result.error;
        var method = result.setupIntent && result.setupIntent.payment_method;
        if (typeof method === "object" && method) method = method.id;
        if (!method) throw { message: form.getAttribute("data-no-card") };
        form.querySelector('input[name="payment_method"]').value = method;
        form.setAttribute("data-ready", "1");
        say(progress, form.getAttribute("data-paying"));
        form.submit();
      }).catch(fail);
    });
  });

  /* -- following a purchase until it ends ------------------------------------------------ */
  var state = document.getElementById("purchase-state");
  if (state && state.getAttribute("data-terminal") !== "true") {
    var asked = {};
    var authenticate = function (secret) {
      var stripe = stripeFor(state);
      if (!stripe || asked[secret]) return;
      asked[secret] = true;
      stripe.confirmCardPayment(secret).then(function () { poll(); });
    };
    var wire = function () {
      var button = state.querySelector("[data-authenticate]");
      if (!button) return;
      button.addEventListener("click", function () {
        delete asked[button.getAttribute("data-authenticate")];
        authenticate(button.getAttribute("data-authenticate"));
      });
      authenticate(button.getAttribute("data-authenticate"));
    };
    var timer = null;
    var poll = function () {
      clearTimeout(timer);
      fetch(state.getAttribute("data-live-url"), {
        credentials: "same-origin", headers: { "Accept": "application/json" }
      }).then(function (response) { return response.json(); }).then(function (body) {
        if (body.terminal) { window.location.reload(); return; }
        if (body.status !== state.getAttribute("data-status")) {
          state.setAttribute("data-status", body.status);
          state.innerHTML = body.html;
          wire();
        }
        timer = setTimeout(poll, 1000);
      }).catch(function () { timer = setTimeout(poll, 3000); });
    };
    wire();
    timer = setTimeout(poll, 700);
  } else if (state) {
    var heading = document.getElementById("state-heading");
    if (heading) heading.focus();
  }
})();
