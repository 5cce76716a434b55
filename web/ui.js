// Small DOM helpers shared by every view: element building, toasts, confirmation, formatting.

/**
 * Builds an element: `h("a.button#id", { href }, "text", child)`. Attributes starting with "on"
 * become listeners; `null`, `undefined` and `false` children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const [, name, rest] = /^([a-z0-9]+)(.*)$/.exec(tag);
  const el = document.createElement(name);
  for (const [, kind, value] of rest.matchAll(/([.#])([^.#]+)/g)) {
    if (kind === "#") el.id = value;
    else el.classList.add(value);
  }
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

let toastTimer;

/** Shows a short message at the bottom of the page (announced to screen readers). */
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("shown");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("shown"), 4000);
}

/** Asks for confirmation in a modal dialog; resolves to true when confirmed. */
export function confirmAction(title, text, action = "Delete") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** "3 min ago", "in 5 s", with the exact time as a tooltip. */
export function when(ms) {
  if (ms === null || ms === undefined) return h("span.muted", {}, "—");
  const date = new Date(ms);
  const seconds = Math.round((ms - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  const [value, unit] =
    abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.round(abs / 60), "min"] :
    abs < 86400 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), "d"];
  const text = abs < 5 ? "just now" : seconds < 0 ? `${value} ${unit} ago` : `in ${value} ${unit}`;
  return h("time", { datetime: date.toISOString(), title: date.toLocaleString() }, text);
}

/** A coloured badge for a delivery, build or task state. */
export function stateBadge(state) {
  return h(`span.badge.state-${String(state).toLowerCase()}`, {}, state);
}

/** Pretty-prints JSON text; returns the text unchanged when it is not JSON. */
export function pretty(text) {
  if (text === null || text === undefined || text === "") return "";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** A block of code or data, with a copy button. */
export function codeBlock(text, label) {
  const pre = h("pre.code", { tabindex: "0", "aria-label": label }, text || "(empty)");
  const copy = h("button.ghost.small.copy", {
    type: "button",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        toast("Copied.");
      } catch {
        toast("The browser did not allow copying.", "error");
      }
    },
  }, "Copy");
  return h("div.code-wrap", {}, copy, pre);
}

/** An inline error box for a failed request. */
export function errorBox(error) {
  return h("p.error-box", { role: "alert" }, error.message);
}
