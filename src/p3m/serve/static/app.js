"use strict";
// The p3m page: send the picked photo to /v1/matte or /v1/anonymize and show what comes back.

const $ = (id) => document.getElementById(id);
let photo = null;
let resultUrl = null;

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

function pick(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    showMessage(`${file.name} is not an image.`);
    return;
  }
  photo = file;
  showMessage("");
  $("drop-text").textContent = file.name;
  $("original").src = URL.createObjectURL(file);
  $("original").hidden = false;
  $("run").disabled = false;
}

function setBusy(busy) {
  $("busy").hidden = !busy;
  $("run").disabled = busy || !photo;
  document.body.setAttribute("aria-busy", busy ? "true" : "false");
}

async function errorText(response) {
  let detail = "";
  try {
    detail = (await response.json()).error || "";
  } catch (_) {
    detail = "";
  }
  const reasons = {
    401: "The server needs an API key (enter it under Options).",
    413: "The photo is larger than the server accepts.",
    422: "Faces were still detectable after hiding them, so nothing is returned.",
    503: "The server is busy or still loading its model; try again in a few seconds.",
  };
  const reason = reasons[response.status] || `The server could not process the photo (HTTP ${response.status}).`;
  return detail ? `${reason} ${detail}` : reason;
}

async function run(event) {
  event.preventDefault();
  if (!photo) return;
  const output = document.querySelector("input[name=output]:checked").value;
  const form = new FormData();
  form.append("image", photo);
  let route = "/v1/anonymize";
  if (output !== "anonymize") {
    route = "/v1/matte";
    form.append("output", output);
    if (output === "composite") form.append("background", $("background").value);
    if ($("method").value) form.append("method", $("method").value);
    form.append("privacy", $("privacy").checked ? "true" : "false");
  }
  const headers = {};
  if ($("api-key").value) headers.Authorization = `Bearer ${$("api-key").value}`;
  showMessage("");
  setBusy(true);
  try {
    const response = await fetch(route, { method: "POST", body: form, headers });
    if (!response.ok) {
      showMessage(await errorText(response));
      return;
    }
    const blob = await response.blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    $("result").src = resultUrl;
    $("result").hidden = false;
    const stem = photo.name.replace(/\.[^.]*$/, "") || "photo";
    const extension = output === "anonymize" ? (photo.name.match(/\.[^.]*$/) || [".png"])[0] : ".png";
    $("download").href = resultUrl;
    $("download").download = `${stem}-${output === "rgba" ? "cutout" : output}${extension}`;
    $("download").hidden = false;
  } catch (error) {
    showMessage(`Could not reach the server (${error.message}).`);
  } finally {
    setBusy(false);
  }
}

$("file").addEventListener("change", (event) => pick(event.target.files[0]));
$("controls").addEventListener("submit", run);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  pick(event.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
