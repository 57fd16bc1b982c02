// faceveil web page: protect (detect -> choose faces -> protect -> download) and recover.
// Talks only to the server that served it; nothing is stored in the browser.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { protectFile: null, faces: [], bitmap: null, detectSeq: 0, urls: [] };

function setStatus(el, text, kind) {
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.message) return body.message;
  } catch (e) { /* not JSON */ }
  return `the server answered ${resp.status} ${resp.statusText}`;
}

function filenameFrom(resp, fallback) {
  const cd = resp.headers.get("Content-Disposition") || "";
  const m = /filename="([^"]+)"/.exec(cd);
  return m ? m[1] : fallback;
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  return url;
}

// -- tabs ------------------------------------------------------------------------------------------

function showTab(name) {
  for (const t of ["protect", "recover"]) {
    $("tab-" + t).setAttribute("aria-selected", String(t === name));
    $(t).hidden = t !== name;
  }
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
}

// -- drop zones ------------------------------------------------------------------------------------

function wireDrop(zoneId, inputId) {
  const zone = $(zoneId), input = $(inputId);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
}

// -- password strength -----------------------------------------------------------------------------

function passwordBits(pw) {
  if (!pw) return 0;
  let pool = 0;
  if (/[a-z]/.test(pw)) pool += 26;
  if (/[A-Z]/.test(pw)) pool += 26;
  if (/[0-9]/.test(pw)) pool += 10;
  if (/[^a-zA-Z0-9]/.test(pw)) pool += 33;
  const distinct = new Set(pw).size;
  const effectiveLength = Math.min(pw.length, distinct * 2.5);  // "aaaaaaaa" is not 8 characters of entropy
  return Math.round(effectiveLength * Math.log2(Math.max(pool, 2)));
}

function updatePasswordHint() {
  const pw = $("password").value, pw2 = $("password2").value, hint = $("pw-hint");
  const bits = passwordBits(pw);
  if (!pw) {
    hint.textContent = "Use a long passphrase: anyone with the password can see the faces, and nobody can recover them without it.";
    hint.className = "hint";
  } else if (pw2 && pw !== pw2) {
    hint.textContent = "The two passwords do not match.";
    hint.className = "hint weak";
  } else if (bits < 45) {
    hint.textContent = `Weak (about ${bits} bits): a short or simple password can be guessed. Use four or more random words.`;
    hint.className = "hint weak";
  } else if (bits < 65) {
    hint.textContent = `Fair (about ${bits} bits). Longer is safer.`;
    hint.className = "hint fair";
  } else {
    hint.textContent = `Strong (about ${bits} bits).`;
    hint.className = "hint strong";
  }
  updateProtectButton();
}

function updateProtectButton() {
  const pw = $("password").value;
  $("protect-btn").disabled = !(state.protectFile && pw && pw === $("password2").value && !state.alreadyProtected);
}

// -- faces -----------------------------------------------------------------------------------------

function drawOriginal() {
  const canvas = $("original-canvas");
  if (!state.bitmap) { canvas.hidden = true; return; }
  canvas.width = state.bitmap.width;
  canvas.height = state.bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(state.bitmap, 0, 0);
  const lw = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 400));
  ctx.font = `${lw * 8}px system-ui, sans-serif`;
  for (const f of state.faces) {
    const [x0, y0, x1, y1] = f.box;
    ctx.lineWidth = lw;
    ctx.setLineDash(f.veil ? [] : [lw * 3, lw * 2]);
    ctx.strokeStyle = f.veil ? "#2456a6" : "#9aa7b5";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = f.veil ? "#2456a6" : "#9aa7b5";
    ctx.fillText(String(f.index + 1), x0 + lw, Math.max(lw * 8, y0 - lw));
  }
  canvas.hidden = false;
}

function renderFaceList() {
  const list = $("faces");
  list.replaceChildren();
  for (const f of state.faces) {
    const li = document.createElement("li");
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "face-toggle";
    box.dataset.index = String(f.index);
    box.checked = f.veil;
    box.addEventListener("change", () => { f.veil = box.checked; drawOriginal(); });
    label.append(box, ` Face ${f.index + 1}`);
    li.append(label);
    list.append(li);
  }
  $("faces-panel").hidden = state.faces.length === 0;
}

async function detectFaces(file) {
  const seq = ++state.detectSeq;
  const form = new FormData();
  form.append("image", file, file.name);
  setStatus($("protect-status"), "Looking for faces…");
  let resp;
  try {
    resp = await fetch("/api/detect", { method: "POST", body: form });
  } catch (e) {
    setStatus($("protect-status"), "Cannot reach the faceveil server: " + e.message, "error");
    return;
  }
  if (seq !== state.detectSeq) return;  // another file was chosen meanwhile
  if (!resp.ok) {
    state.faces = [];
    renderFaceList();
    setStatus($("protect-status"), "Cannot read this photo: " + (await errorMessage(resp)), "error");
    state.protectFile = null;
    updateProtectButton();
    return;
  }
  const info = await resp.json();
  state.alreadyProtected = info.protected;
  state.faces = info.faces.map((f) => ({ index: f.index, box: f.box, veil: true }));
  renderFaceList();
  drawOriginal();
  if (info.protected) {
    setStatus($("protect-status"), "This photo is already protected by faceveil: recover it first.", "error");
  } else if (!state.faces.length) {
    setStatus($("protect-status"), "No face found in this photo; protecting it would change nothing.");
  } else {
    setStatus($("protect-status"), `${state.faces.length} face${state.faces.length > 1 ? "s" : ""} found.`);
  }
  updateProtectButton();
}

async function chooseProtectFile() {
  const file = $("protect-file").files[0];
  state.protectFile = file || null;
  state.faces = [];
  state.alreadyProtected = false;
  $("veiled-img").hidden = true;
  $("download-protected").hidden = true;
  renderFaceList();
  $("protect-filename").textContent = file ? file.name : "";
  state.bitmap = null;
  if (file) {
    try {
      state.bitmap = await createImageBitmap(file);
    } catch (e) {
      state.bitmap = null;  // a format the browser cannot show (e.g. TIFF): the server may still read it
    }
    drawOriginal();
    await detectFaces(file);
  }
  updateProtectButton();
}

function canvasClick(e) {
  const canvas = $("original-canvas");
  const r = canvas.getBoundingClientRect();
  const x = (e.clientX - r.left) * canvas.width / r.width, y = (e.clientY - r.top) * canvas.height / r.height;
  for (const f of state.faces) {
    const [x0, y0, x1, y1] = f.box;
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1) {
      f.veil = !f.veil;
      const box = document.querySelector(`.face-toggle[data-index="${f.index}"]`);
      if (box) box.checked = f.veil;
      drawOriginal();
      return;
    }
  }
}

// -- protect / recover -------------------------------------------------------------------------------

async function protect() {
  const btn = $("protect-btn"), status = $("protect-status");
  const file = state.protectFile;
  if (!file) return;
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("password", $("password").value);
  form.append("veil", $("veil").value);
  form.append("strength", $("strength").value);
  if (state.faces.length) {
    form.append("boxes", JSON.stringify(state.faces.filter((f) => f.veil).map((f) => f.box)));
  }
  btn.disabled = true;
  setStatus(status, "Protecting…");
  try {
    const resp = await fetch("/api/protect", { method: "POST", body: form });
    if (!resp.ok) {
      setStatus(status, "Not protected: " + (await errorMessage(resp)), "error");
      return;
    }
    const blob = await resp.blob();
    const url = objectUrl(blob);
    const n = Number(resp.headers.get("X-Faceveil-Faces") || 0);
    $("veiled-img").src = url;
    $("veiled-img").hidden = false;
    const a = $("download-protected");
    a.href = url;
    a.download = filenameFrom(resp, "photo.veiled.png");
    a.hidden = false;
    setStatus(status, `Veiled ${n} face${n === 1 ? "" : "s"}. Download the protected PNG and keep the password: ` +
      "without it the faces cannot be recovered.", "ok");
  } catch (e) {
    setStatus(status, "Cannot reach the faceveil server: " + e.message, "error");
  } finally {
    updateProtectButton();
  }
}

function updateRecoverButton() {
  $("recover-btn").disabled = !($("recover-file").files[0] && $("recover-password").value);
}

function chooseRecoverFile() {
  const file = $("recover-file").files[0];
  $("recover-filename").textContent = file ? file.name : "";
  $("recovered-img").hidden = true;
  $("download-recovered").hidden = true;
  setStatus($("recover-status"), "");
  if (file) {
    $("protected-preview").src = objectUrl(file);
    $("protected-preview").hidden = false;
  }
  updateRecoverButton();
}

async function recover() {
  const btn = $("recover-btn"), status = $("recover-status");
  const file = $("recover-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("password", $("recover-password").value);
  btn.disabled = true;
  setStatus(status, "Recovering…");
  $("recovered-img").hidden = true;
  $("download-recovered").hidden = true;
  try {
    const resp = await fetch("/api/recover", { method: "POST", body: form });
    if (resp.status === 403) {
      setStatus(status, "Wrong password: the faces stay veiled.", "error");
      return;
    }
    if (!resp.ok) {
      setStatus(status, "Not recovered: " + (await errorMessage(resp)), "error");
      return;
    }
    const blob = await resp.blob();
    const url = objectUrl(blob);
    $("recovered-img").src = url;
    $("recovered-img").hidden = false;
    const a = $("download-recovered");
    a.href = url;
    a.download = filenameFrom(resp, "photo.recovered.png");
    a.hidden = false;
    const n = Number(resp.headers.get("X-Faceveil-Faces") || 0);
    let msg = `Recovered ${n} face${n === 1 ? "" : "s"}.`;
    if (resp.headers.get("X-Faceveil-Modified") === "true") {
      msg += " The file was changed after protection (re-saved or edited?), so the faces may be degraded.";
    }
    setStatus(status, msg, "ok");
  } catch (e) {
    setStatus(status, "Cannot reach the faceveil server: " + e.message, "error");
  } finally {
    updateRecoverButton();
  }
}

// -- start -------------------------------------------------------------------------------------------

async function loadVeils() {
  const select = $("veil");
  try {
    const resp = await fetch("/api/veils");
    const info = await resp.json();
    for (const v of info.veils) {
      const opt = document.createElement("option");
      opt.value = v.name;
      opt.textContent = v.name;
      opt.title = v.summary;
      opt.selected = v.name === info.default;
      select.append(opt);
    }
  } catch (e) {
    setStatus($("protect-status"), "Cannot reach the faceveil server: " + e.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("tab-protect").addEventListener("click", () => showTab("protect"));
  $("tab-recover").addEventListener("click", () => showTab("recover"));
  showTab(location.hash === "#recover" ? "recover" : "protect");
  wireDrop("protect-drop", "protect-file");
  wireDrop("recover-drop", "recover-file");
  $("protect-file").addEventListener("change", chooseProtectFile);
  $("recover-file").addEventListener("change", chooseRecoverFile);
  $("password").addEventListener("input", updatePasswordHint);
  $("password2").addEventListener("input", updatePasswordHint);
  $("recover-password").addEventListener("input", updateRecoverButton);
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value + "×"; });
  $("original-canvas").addEventListener("click", canvasClick);
  $("protect-btn").addEventListener("click", protect);
  $("recover-btn").addEventListener("click", recover);
  loadVeils();
});
