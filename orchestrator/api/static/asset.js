// The asset page and the gallery: boxes on or off, transcript timestamps that seek the player, video boxes that
// follow the frame being shown, and blurred NSFW media shown on request.
(function () {
  "use strict";

  function each(selector, fn, root) {
    Array.prototype.forEach.call((root || document).querySelectorAll(selector), fn);
  }

  function init() {
    var media = document.getElementById("media");
    var overlay = document.getElementById("overlay");
    var frame = document.getElementById("media-frame");

    var toggle = document.getElementById("toggle-boxes");
    if (toggle && overlay) {
      toggle.addEventListener("change", function () {
        overlay.classList.toggle("is-hidden", !toggle.checked);
      });
    }

    // NSFW: one item on the asset page, every blurred thumbnail in the gallery.
    each("[data-unblur]", function (button) {
      button.addEventListener("click", function () {
        each("[data-nsfw]", function (element) {
          element.classList.remove("nsfw-blur");
        });
        if (frame) frame.classList.remove("is-blurred");
        var warning = document.getElementById("nsfw-warning");
        if (warning) warning.hidden = true;
      });
    });
    var unblurAll = document.querySelector("[data-unblur-all]");
    if (unblurAll && document.querySelector("[data-nsfw]")) {
      unblurAll.hidden = false;
      unblurAll.addEventListener("click", function () {
        each("[data-nsfw]", function (element) {
          element.classList.remove("nsfw-blur");
        });
        unblurAll.hidden = true;
      });
    }

    if (!media || typeof media.currentTime !== "number") return;

    // Transcript: a timestamp plays from there.
    var segments = [];
    each("button.seek[data-t]", function (button) {
      var t = parseFloat(button.getAttribute("data-t"));
      if (!isFinite(t)) return;
      segments.push({ t: t, item: button.parentElement });
      button.addEventListener("click", function () {
        media.currentTime = t;
        var playing = media.play && media.play();
        if (playing && playing.catch) playing.catch(function () {}); // autoplay may be refused; the seek stands
      });
    });

    // Video boxes belong to analyzed frames: show those of the latest frame at or before the current time.
    var boxes = [];
    each(".box[data-t]", function (box) {
      var t = parseFloat(box.getAttribute("data-t"));
      if (isFinite(t)) boxes.push({ t: t, box: box });
    });
    var times = boxes
      .map(function (b) { return b.t; })
      .filter(function (t, i, all) { return all.indexOf(t) === i; })
      .sort(function (a, b) { return a - b; });

    function latest(list, now) {
      var found = list.length ? list[0] : null;
      for (var i = 0; i < list.length; i += 1) if (list[i] <= now + 0.05) found = list[i];
      return found;
    }

    function follow() {
      var now = media.currentTime || 0;
      if (times.length) {
        var shown = latest(times, now);
        boxes.forEach(function (b) {
          b.box.hidden = b.t !== shown;
        });
      }
      if (segments.length) {
        var starts = segments.map(function (s) { return s.t; });
        var current = latest(starts, now);
        segments.forEach(function (s) {
          s.item.classList.toggle("current", s.t === current && now > 0);
        });
      }
    }
    media.addEventListener("timeupdate", follow);
    media.addEventListener("seeked", follow);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
