// The upload page: files and whole folders (drop, or the pickers) stream to the REST API, each file as its own
// multipart request, at most data-max-parallel at a time. Files are handed to XMLHttpRequest as File objects, so the
// browser reads them from disk as it sends: nothing is loaded into memory here, whatever the size.
// Every request carries the session's CSRF token (the <meta name="csrf-token"> of the page) in X-CSRF-Token.
(function () {
  "use strict";

  var form = document.getElementById("upload-form");
  if (!form) return;
  var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10) || Infinity;
  var maxParallel = parseInt(form.getAttribute("data-max-parallel"), 10) || 3;
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  var dropZone = document.getElementById("drop-zone");
  var fileInput = document.getElementById("file-input");
  var folderInput = document.getElementById("folder-input");
  var panel = document.getElementById("upload-panel");
  var list = document.getElementById("upload-list");
  var template = document.getElementById("upload-row-template");
  var overallBar = document.getElementById("overall-bar");
  var overallProgress = document.getElementById("overall-progress");
  var overallText = document.getElementById("overall-text");
  var errorBox = document.getElementById("upload-error");
  var startButton = document.getElementById("start-analysis");
  var startHelp = document.getElementById("start-help");
  var jobLink = document.getElementById("job-link");

  var jobId = null;
  var jobPromise = null;
  var items = [];
  var active = 0;
  var sealing = false;

  function human(bytes) {
    var units = ["B", "KB", "MB", "GB", "TB"];
    var value = bytes;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function json(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return null;
    }
  }

  function detailMessage(body, status) {
    if (body && body.detail && body.detail.message) return body.detail.message;
    if (status === 0) return "The connection failed.";
    return "The server answered " + status + ".";
  }

  function api(method, url, body) {
    var headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (response) {
      return response.text().then(function (text) {
        return { status: response.status, body: json(text) };
      });
    });
  }

  function chosenAnalyzers() {
    return Array.prototype.filter
      .call(form.querySelectorAll('input[name="analyzers"]'), function (box) {
        return box.checked;
      })
      .map(function (box) {
        return box.value;
      });
  }

  function ensureJob() {
    if (jobPromise) return jobPromise;
    var analyzers = chosenAnalyzers();
    var body = { name: document.getElementById("job-name").value.trim() };
    if (analyzers.length) body.analyzers = analyzers;
    jobPromise = api("POST", "/api/v1/jobs", body).then(function (answer) {
      if (answer.status !== 201 || !answer.body || !answer.body.id) {
        jobPromise = null; // the next file tries again
        throw new Error(detailMessage(answer.body, answer.status));
      }
      jobId = answer.body.id;
      Array.prototype.forEach.call(form.elements, function (element) {
        element.disabled = true; // the job exists now: its name and analyzers are fixed
      });
      jobLink.textContent = "";
      var link = document.createElement("a");
      link.href = "/jobs/" + encodeURIComponent(jobId);
      link.textContent = "Job " + (answer.body.name || jobId.slice(0, 8));
      jobLink.appendChild(link);
      return jobId;
    });
    return jobPromise;
  }

  function render(item) {
    var row = item.row;
    row.setAttribute("data-status", item.status);
    var badge = row.querySelector(".upload-badge");
    badge.className = "badge upload-badge badge-" + item.status;
    badge.textContent = item.status;
    var percent = item.file.size ? Math.min(100, (100 * item.loaded) / item.file.size) : 0;
    if (item.status === "accepted" || item.status === "rejected") percent = 100;
    var progress = row.querySelector(".progress");
    progress.setAttribute("aria-valuenow", String(Math.round(percent)));
    var bar = row.querySelector(".bar");
    bar.style.width = percent + "%";
    bar.classList.toggle("bar-failed", item.status === "rejected" || item.status === "error");
    row.querySelector(".upload-message").textContent = item.message || "";
    row.querySelector(".upload-retry").hidden = item.status !== "error";
  }

  function summary() {
    var counts = { queued: 0, uploading: 0, accepted: 0, rejected: 0, error: 0 };
    var total = 0;
    var sent = 0;
    items.forEach(function (item) {
      counts[item.status] += 1;
      if (item.local) return; // refused before sending: no bytes to wait for
      total += item.file.size;
      if (item.status === "accepted" || item.status === "rejected") sent += item.file.size;
      else if (item.status === "uploading") sent += item.loaded;
    });
    var percent = total ? (100 * sent) / total : items.length ? 100 : 0;
    overallBar.style.width = percent + "%";
    overallProgress.setAttribute("aria-valuenow", String(Math.round(percent)));
    var parts = [counts.accepted + " accepted"];
    if (counts.rejected) parts.push(counts.rejected + " rejected");
    if (counts.error) parts.push(counts.error + " failed to send");
    if (counts.uploading || counts.queued) parts.push(counts.uploading + counts.queued + " to go");
    overallText.textContent =
      items.length + " file" + (items.length === 1 ? "" : "s") + ": " + parts.join(", ") +
      " · " + human(sent) + " of " + human(total);
    var busy = counts.uploading + counts.queued > 0;
    startButton.disabled = sealing || busy || !jobId || counts.accepted === 0;
    if (busy) startHelp.textContent = "Available once every upload has finished.";
    else if (!counts.accepted) startHelp.textContent = "Add at least one file the server accepts.";
    else if (counts.error)
      startHelp.textContent = counts.error + " file(s) failed to send: retry them, or start without them.";
    else startHelp.textContent = "All files are in. Start when you are ready.";
  }

  // Progress events come many times a second per upload: repaint at most once per frame, whatever the file count.
  var dirty = [];
  var frameRequested = false;
  function redraw(item) {
    if (dirty.indexOf(item) === -1) dirty.push(item);
    if (frameRequested) return;
    frameRequested = true;
    window.requestAnimationFrame(function () {
      frameRequested = false;
      var batch = dirty;
      dirty = [];
      batch.forEach(render);
      summary();
    });
  }

  function finish(item, status, message) {
    item.status = status;
    item.message = message;
    if (status !== "uploading") item.xhr = null;
    render(item);
    summary();
  }

  function send(item) {
    active += 1;
    item.loaded = 0;
    finish(item, "uploading", "");
    var xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", "/api/v1/jobs/" + encodeURIComponent(jobId) + "/files");
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = function (event) {
      if (!event.lengthComputable || !event.total) return;
      // event.total includes the multipart envelope; scale to the file's own size.
      item.loaded = Math.min(item.file.size, (event.loaded * item.file.size) / event.total);
      redraw(item);
    };
    function done(status, message) {
      active -= 1;
      finish(item, status, message);
      pump();
    }
    xhr.onload = function () {
      var body = json(xhr.responseText);
      var answer = body && body.files && body.files[0];
      if (answer && answer.status === "accepted") {
        done("accepted", answer.media_kind ? "accepted as " + answer.media_kind : "accepted");
      } else if (answer) {
        done("rejected", (answer.message || answer.status) + (answer.code ? " (" + answer.code + ")" : ""));
      } else if (xhr.status === 401) {
        done("error", "You are signed out. Sign in again in another tab, then retry.");
      } else {
        done("error", detailMessage(body, xhr.status));
      }
    };
    xhr.onerror = function () {
      done("error", "The connection failed while sending.");
    };
    xhr.onabort = function () {
      done("error", "The upload was interrupted.");
    };
    var data = new FormData();
    data.append("files", item.file, item.path);
    xhr.send(data);
  }

  function pump() {
    if (!items.some(function (item) { return item.status === "queued"; })) return;
    ensureJob().then(
      function () {
        showError("");
        for (var i = 0; i < items.length && active < maxParallel; i += 1) {
          if (items[i].status === "queued") send(items[i]);
        }
      },
      function (error) {
        showError("The job could not be created: " + error.message);
        items.forEach(function (item) {
          if (item.status === "queued") finish(item, "error", "not sent: the job could not be created");
        });
      }
    );
  }

  function add(file, path) {
    var row = template.content.firstElementChild.cloneNode(true);
    var item = { file: file, path: path || file.name, status: "queued", loaded: 0, message: "", row: row, local: false };
    row.querySelector(".upload-name").textContent = item.path;
    row.querySelector(".progress").setAttribute("aria-label", "Upload of " + item.path);
    row.querySelector(".upload-size").textContent = human(file.size);
    row.querySelector(".upload-retry").addEventListener("click", function () {
      if (item.status !== "error") return;
      finish(item, "queued", "");
      pump();
    });
    if (file.size > maxBytes) {
      item.local = true;
      item.status = "rejected";
      item.message = "over the limit of " + human(maxBytes) + " per file (file_too_large)";
    }
    items.push(item);
    list.appendChild(row);
    panel.hidden = false;
    render(item);
  }

  function addAll(files) {
    files.forEach(function (entry) {
      add(entry.file, entry.path);
    });
    summary();
    pump();
  }

  function fromInput(input) {
    var files = Array.prototype.map.call(input.files, function (file) {
      return { file: file, path: file.webkitRelativePath || file.name };
    });
    input.value = ""; // choosing the same files again adds them again
    addAll(files);
  }

  function walk(entry, found, pending, whenDone) {
    pending.count += 1;
    function settle() {
      pending.count -= 1;
      if (pending.count === 0) whenDone();
    }
    var path = entry.fullPath ? entry.fullPath.replace(/^\//, "") : entry.name;
    if (entry.isFile) {
      entry.file(
        function (file) {
          found.push({ file: file, path: path });
          settle();
        },
        settle
      );
    } else if (entry.isDirectory) {
      var reader = entry.createReader();
      var readBatch = function () {
        // readEntries answers in batches (about 100 at a time in Chromium) until it answers none.
        reader.readEntries(function (entries) {
          if (!entries.length) {
            settle();
            return;
          }
          entries.forEach(function (child) {
            walk(child, found, pending, whenDone);
          });
          readBatch();
        }, settle);
      };
      readBatch();
    } else {
      settle();
    }
  }

  function fromDrop(transfer) {
    var entries = [];
    if (transfer.items && transfer.items.length && transfer.items[0].webkitGetAsEntry) {
      // Entries must be taken while the drop event runs; the DataTransfer is empty afterwards.
      Array.prototype.forEach.call(transfer.items, function (item) {
        var entry = item.kind === "file" ? item.webkitGetAsEntry() : null;
        if (entry) entries.push(entry);
      });
    }
    if (!entries.length) {
      addAll(
        Array.prototype.map.call(transfer.files || [], function (file) {
          return { file: file, path: file.name };
        })
      );
      return;
    }
    var found = [];
    var pending = { count: 0 };
    var whenDone = function () {
      found.sort(function (a, b) {
        return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
      });
      addAll(found);
    };
    entries.forEach(function (entry) {
      walk(entry, found, pending, whenDone);
    });
  }

  dropZone.addEventListener("click", function () {
    fileInput.click();
  });
  ["dragenter", "dragover"].forEach(function (name) {
    dropZone.addEventListener(name, function (event) {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  });
  ["dragleave", "dragend"].forEach(function (name) {
    dropZone.addEventListener(name, function () {
      dropZone.classList.remove("dragging");
    });
  });
  dropZone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    fromDrop(event.dataTransfer);
  });
  // A file dropped beside the zone would make the browser leave the page to open it.
  ["dragover", "drop"].forEach(function (name) {
    window.addEventListener(name, function (event) {
      if (event.dataTransfer && Array.prototype.indexOf.call(event.dataTransfer.types || [], "Files") !== -1) {
        event.preventDefault();
      }
    });
  });
  fileInput.addEventListener("change", function () {
    fromInput(fileInput);
  });
  folderInput.addEventListener("change", function () {
    fromInput(folderInput);
  });

  startButton.addEventListener("click", function () {
    if (!jobId || sealing) return;
    sealing = true;
    summary();
    api("POST", "/api/v1/jobs/" + encodeURIComponent(jobId) + "/seal").then(
      function (answer) {
        if (answer.status === 200) {
          window.location.assign("/jobs/" + encodeURIComponent(jobId));
          return;
        }
        sealing = false;
        showError("The analysis could not start: " + detailMessage(answer.body, answer.status));
        summary();
      },
      function () {
        sealing = false;
        showError("The analysis could not start: the connection failed. Try again.");
        summary();
      }
    );
  });

  window.addEventListener("beforeunload", function (event) {
    if (sealing) return;
    var busy = items.some(function (item) {
      return item.status === "uploading" || item.status === "queued";
    });
    if (busy) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
})();
