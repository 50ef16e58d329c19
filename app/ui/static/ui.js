// Live progress from the job's Server-Sent Events, and confirmation before a cancel.
// Each element with data-live="<events URL>" follows its job: status, stage, progress bar and position
// update as events arrive; the stream closes itself after the terminal event (then the page reloads once,
// for the result and the timeline).
"use strict";

function follow(element) {
  const source = new EventSource(element.dataset.live);
  const show = (data) => {
    const status = element.querySelector(".status");
    const stage = element.querySelector(".stage");
    const bar = element.querySelector("progress");
    const position = element.querySelector(".position");
    const progress = data.progress || {};
    if (status && data.status) status.firstChild.textContent = data.status;
    if (stage) stage.textContent = data.stage || "";
    if (bar) bar.value = progress.fraction ?? (data.status === "succeeded" ? 1 : bar.value);
    if (position) {
      position.textContent = progress.tokens_total
        ? `${progress.tokens} / ${progress.tokens_total} tokens`
        : progress.layers ? `layer ${progress.layer} / ${progress.layers}` : "";
    }
    element.className = element.className.replace(/\b(queued|running|succeeded|failed|cancelled)\b/, data.status);
  };
  for (const kind of ["queued", "stage", "progress", "cancel_requested"]) {
    source.addEventListener(kind, (event) => show(JSON.parse(event.data)));
  }
  source.addEventListener("terminal", (event) => {
    show(JSON.parse(event.data));
    source.close();
    element.dataset.done = "1";
    if (element.tagName === "SECTION") window.location.reload();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(follow);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  document.querySelectorAll("svg .point[data-job]").forEach((point) => {
    if (point.dataset.job) point.addEventListener("click", () => { window.location = `/ui/jobs/${point.dataset.job}`; });
  });
});
