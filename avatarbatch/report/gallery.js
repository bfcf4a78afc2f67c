(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-var]"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-status]"));
  var status = "all";
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var ok = status === "all" || card.getAttribute("data-status") === status;
      selects.forEach(function (s) {
        if (s.value && card.getAttribute("data-var-" + s.dataset.var) !== s.value) ok = false;
      });
      card.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("shown").textContent = shown + " of " + cards.length + " shown";
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      status = b.dataset.status;
      buttons.forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      apply();
    });
  });
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();

  var videos = document.querySelectorAll("video[data-job]");
  var ready = 0;
  document.body.dataset.videosTotal = videos.length;
  document.body.dataset.videos = 0;
  Array.prototype.forEach.call(videos, function (v) {
    function loaded() {
      if (v.dataset.readyState) return;
      v.dataset.readyState = v.readyState;
      v.dataset.duration = v.duration;
      ready += 1;
      document.body.dataset.videos = ready;
    }
    function failed() {
      if (v.dataset.error) return;
      v.dataset.error = "1";
      var note = document.createElement("div");
      note.className = "playback";
      note.textContent = "This browser cannot play this file" +
        (v.error && v.error.message ? " (" + v.error.message + ")" : "");
      v.insertAdjacentElement("afterend", note);
    }
    v.addEventListener("loadedmetadata", loaded);
    v.addEventListener("error", failed);
    if (v.readyState >= 1) loaded();
    if (v.error) failed();
  });
})();
