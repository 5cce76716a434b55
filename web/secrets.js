// The organization's named secrets: defined once, used by any endpoint that names them. Values
// are write-only (shown masked); a secret can be set, rotated with an overlap, or deleted.

import { gql, SECRET_FIELDS } from "./api.js";
import { h, toast, confirmAction, when, errorBox } from "./ui.js";
import { loadEndpoints } from "./endpoints.js";

const DEFAULT_OVERLAP_HOURS = 24;

/** A form's refusal, in the API's words. */
function refusal(box, error) {
  box.replaceChildren(h("p.error-box", { role: "alert" }, error.message));
}

function rotateForm(secret, viewer, refresh) {
  const value = h("input.rotate-value", {
    type: "password", autocomplete: "new-password", spellcheck: "false", required: true,
    id: `rotate-value-${secret.name}`,
  });
  const hours = h("input.rotate-overlap", {
    type: "number", min: "0", max: "720", step: "1", value: String(DEFAULT_OVERLAP_HOURS),
    id: `rotate-overlap-${secret.name}`,
  });
  const problem = h("div", { "aria-live": "assertive" });
  return h("form.rotate", {
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      problem.replaceChildren();
      const overlap = hours.value.trim() === "" ? null : Math.round(Number(hours.value) * 3600);
      try {
        const data = await gql(`mutation($input: RotateWebHookSecretInput!) {
          rotateWebHookSecret(input: $input) { overlapEndsTimestamp } }`, {
          input: { ownerUid: viewer.uid, name: secret.name, newValue: value.value, overlapSeconds: overlap },
        });
        const ends = new Date(data.rotateWebHookSecret.overlapEndsTimestamp).toLocaleString();
        toast(`${secret.name} was rotated; the replaced value also signs until ${ends}.`);
        refresh();
      } catch (error) {
        refusal(problem, error);
      }
    },
  },
    problem,
    h("div.rotate-fields", {},
      h("div.field", {}, h("label", { for: value.id }, "New value"), value),
      h("div.field", {}, h("label", { for: hours.id }, "Overlap (hours)"), hours)),
    h("p.help", {}, "During the overlap the replaced value signs too, so receivers can switch over."),
    h("button.primary", { type: "submit" }, "Rotate"));
}

function secretCard(secret, urls, viewer, refresh) {
  const used = secret.usedBy.length;
  return h("li.card.secret", { dataset: { name: secret.name } },
    h("div.endpoint-head", {},
      h("b.mono.secret-name", {}, secret.name),
      h("code", {}, secret.maskedValue)),
    h("dl.facts", {},
      h("div", {}, h("dt", {}, "Updated"), h("dd", {}, when(secret.updatedTimestamp))),
      secret.overlapEndsTimestamp ? h("div", {}, h("dt", {}, "Replaced value signs until"),
        h("dd", {}, when(secret.overlapEndsTimestamp))) : null,
      h("div", {}, h("dt", {}, "Used by"), h("dd.used-by", {}, used
        ? secret.usedBy.flatMap((id, i) => [i ? ", " : null, h("a", { href: `#/endpoints/${id}` }, urls.get(id) ?? `endpoint ${id}`)])
        : h("span.muted", {}, "no endpoint")))),
    h("details.rotate-details", {}, h("summary", {}, "Rotate"), rotateForm(secret, viewer, refresh)),
    h("div.actions", {},
      h("button.ghost.danger-text", {
        type: "button",
        title: used ? "Endpoints still sign with it: point them elsewhere first" : "Delete this secret",
        onclick: async () => {
          const yes = await confirmAction(`Delete ${secret.name}?`,
            "Its value is forgotten; endpoints can no longer name it.");
          if (!yes) return;
          try {
            await gql("mutation($input: DeleteWebHookSecretInput!) { deleteWebHookSecret(input: $input) { deletedName } }",
              { input: { ownerUid: viewer.uid, name: secret.name } });
            toast(`${secret.name} was deleted.`);
            refresh();
          } catch (error) {
            toast(error.message, "error");
          }
        },
      }, "Delete")));
}

function setForm(viewer, refresh) {
  const name = h("input#new-secret-name", {
    type: "text", required: true, autocomplete: "off", spellcheck: "false", autocapitalize: "off",
    placeholder: "receiver-shared", "aria-describedby": "new-secret-name-help",
  });
  const value = h("input#new-secret-value", {
    type: "password", required: true, autocomplete: "new-password", spellcheck: "false",
  });
  const problem = h("div#secret-form-error", { "aria-live": "assertive" });
  const form = h("form.card#secret-form", {
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      problem.replaceChildren();
      try {
        await gql("mutation($input: SetWebHookSecretInput!) { setWebHookSecret(input: $input) { secret { name } } }",
          { input: { ownerUid: viewer.uid, name: name.value.trim(), value: value.value } });
        toast(`${name.value.trim()} was saved.`);
        form.reset();
        refresh();
      } catch (error) {
        refusal(problem, error);
      }
    },
  },
    h("h2", {}, "Set a secret"),
    problem,
    h("div.field", {}, h("label", { for: "new-secret-name" }, "Name"), name,
      h("p.help#new-secret-name-help", {}, "A letter or digit, then letters, digits, _, . or -. "
        + "Setting an existing name replaces its value at once, with no overlap.")),
    h("div.field", {}, h("label", { for: "new-secret-value" }, "Value"), value),
    h("div.actions", {}, h("button.primary#save-secret", { type: "submit" }, "Save secret")));
  form.addEventListener("input", () => problem.replaceChildren());
  return form;
}

export async function secretsView({ viewer, main }) {
  const list = h("ul.secrets#secret-list", { "aria-live": "polite" });
  main.replaceChildren(h("section", {},
    h("div.page-head", {},
      h("div", {}, h("h1", {}, "Secrets"),
        h("p.muted", {}, "Named secrets sign the deliveries of every endpoint that names them. "
          + "Values are write-only: only their last characters are shown."))),
    h("div.split", {}, list, setForm(viewer, refresh))));
  let stopped = false;
  async function refresh() {
    try {
      const [data, endpoints] = await Promise.all([
        gql(`{ viewer { webhookSecrets { ${SECRET_FIELDS} } } }`),
        loadEndpoints(),
      ]);
      if (stopped) return;
      const urls = new Map(endpoints.map((endpoint) => [endpoint.id, endpoint.webhookURL]));
      const secrets = data.viewer.webhookSecrets;
      list.replaceChildren(...(secrets.length
        ? secrets.map((secret) => secretCard(secret, urls, viewer, refresh))
        : [h("li.card.empty", {}, h("p", {}, "No named secrets yet."),
            h("p.muted", {}, "Set one here, then choose it in an endpoint's signing settings."))]));
    } catch (error) {
      if (!stopped) list.replaceChildren(h("li", {}, errorBox(error)));
    }
  }
  await refresh();
  return () => {
    stopped = true;
  };
}
