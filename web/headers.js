// An endpoint's custom headers, for the endpoint editor: rows of a name and a value. Values are
// write-only: a stored header shows its masked value, and sending the mask back keeps it.

import { h } from "./ui.js";

/** How many custom headers an endpoint may have. */
const MAX_HEADERS = 20;

/** The headers editor; `changed` runs whenever a row is added, edited or removed. */
export function headersEditor(stored, changed) {
  const list = h("ul.header-rows#headers");
  const add = h("button.ghost.small#add-header", {
    type: "button",
    onclick: () => {
      addRow(null).querySelector(".header-name").focus();
      changed();
    },
  }, "Add header");
  const empty = h("p.muted.header-empty", {}, "No custom headers.");
  let made = 0;

  function refresh() {
    const count = list.childElementCount;
    empty.hidden = count > 0;
    add.disabled = count >= MAX_HEADERS;
    add.title = count >= MAX_HEADERS ? `An endpoint has at most ${MAX_HEADERS} custom headers.` : "";
  }

  function addRow(header) {
    made += 1;
    const name = h("input.header-name", {
      type: "text", id: `header-name-${made}`, value: header?.name ?? "", placeholder: "X-Team",
      autocomplete: "off", spellcheck: "false", autocapitalize: "off", "aria-label": "Header name",
    });
    const value = h("input.header-value", {
      type: "text", id: `header-value-${made}`, value: header?.maskedValue ?? "", placeholder: "Value",
      autocomplete: "off", spellcheck: "false", autocapitalize: "off", "aria-label": "Header value",
    });
    if (header) {
      // A stored value is kept only under its own name: a renamed header needs its value again.
      name.addEventListener("input", () => {
        const renamed = name.value.trim().toLowerCase() !== header.name.toLowerCase();
        if (renamed && value.value === header.maskedValue) {
          value.value = "";
          value.placeholder = "Enter the value again";
        }
      });
    }
    const row = h("li.header-row", {}, name, value,
      h("button.ghost.small.danger-text.remove-header", {
        type: "button",
        "aria-label": "Remove this header",
        onclick: () => {
          row.remove();
          refresh();
          changed();
        },
      }, "Remove"));
    row.addEventListener("input", changed);
    list.append(row);
    refresh();
    return row;
  }

  stored.forEach(addRow);
  refresh();

  /** The rows as `WebHookHeaderInput`s; rows left wholly empty are skipped. */
  function values() {
    return [...list.querySelectorAll(".header-row")]
      .map((row) => ({
        name: row.querySelector(".header-name").value.trim(),
        value: row.querySelector(".header-value").value,
      }))
      .filter((header) => header.name || header.value);
  }

  const element = h("fieldset", {}, h("legend", {}, "Custom headers"),
    h("p.help", {}, `Sent with every delivery (at most ${MAX_HEADERS}), say an API key a receiver checks. `
      + "Values are write-only: a stored value shows masked and is kept unless you replace it."),
    list, empty, add);

  return {
    element,
    values,
    /** The rows with a name, for the preview (which masks every value). */
    forPreview: () => values().filter((header) => header.name),
  };
}
