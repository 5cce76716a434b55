// How an endpoint's deliveries are authenticated, for the endpoint editor: the signature style,
// and whether the endpoint's own secret token or one of the organization's named secrets signs.

import { h, when } from "./ui.js";

/** Every signature style, with what it sends besides the identity headers every style sends. */
export const STYLES = {
  CIRRUS: "X-Cirrus-Signature: the hex HMAC-SHA256 of the body, as Cirrus CI sends.",
  GITHUB: "X-Hub-Signature-256: sha256=<hex>, with X-GitHub-Event and X-GitHub-Delivery.",
  JOBSERV: "X-JobServ-Sig: sha256:<hex>, as Foundries.io's jobserv sends.",
  GITLAB: "X-Gitlab-Event: <Name> Hook, and the secret itself as X-Gitlab-Token.",
  CODEUP: "Codeup-Event: <Name> Hook, and the secret itself as X-Codeup-Token.",
  NONE: "No signature of any kind, as Kudu's hooks are sent.",
};

/**
 * The signing part of the endpoint form. `secrets` are the organization's named secrets;
 * `changed` runs whenever what the preview shows may change.
 */
export function signingFields(endpoint, secrets, changed) {
  const style = h("select#signature-style", { name: "signatureStyle", "aria-describedby": "signature-hint" },
    Object.keys(STYLES).map((name) => h("option", {
      value: name, selected: name === (endpoint?.signatureStyle ?? "CIRRUS"),
    }, name)));
  const hint = h("p.help#signature-hint", {});
  const showHint = () => { hint.textContent = STYLES[style.value]; };
  showHint();

  const usesName = Boolean(endpoint?.secretName);
  const own = h("input#secret-source-own", { type: "radio", name: "secretSource", value: "own", checked: !usesName });
  const named = h("input#secret-source-named", {
    type: "radio", name: "secretSource", value: "named", checked: usesName,
    disabled: !secrets.length && !usesName,
  });

  // The endpoint's own secret token: write-only, so it can be replaced or removed, never read.
  const secret = h("input#secret-token", {
    type: "password", name: "secretToken", autocomplete: "new-password", spellcheck: "false",
    placeholder: endpoint?.maskedSecretToken ? "Leave empty to keep the current secret" : "Used to sign every delivery",
  });
  const removeSecret = endpoint?.maskedSecretToken
    ? h("input#remove-secret", { type: "checkbox", name: "removeSecret" }) : null;
  const ownPart = h("div.field.secret-part", {},
    h("label", { for: "secret-token" }, endpoint?.maskedSecretToken ? "Replace the secret" : "Secret token"),
    endpoint && !usesName ? h("p.help", {}, endpoint.maskedSecretToken
      ? ["A secret is set (", h("code", {}, endpoint.maskedSecretToken), "). It is never shown."]
      : "No secret is set: deliveries are not signed.") : null,
    endpoint?.secretOverlapEndsTimestamp ? h("p.help", {},
      "A rotation overlaps: the replaced secret also signs until ", when(endpoint.secretOverlapEndsTimestamp), ".") : null,
    secret,
    removeSecret ? h("label.inline", {}, removeSecret, "Remove the secret (deliveries are sent unsigned)") : null);

  // A named secret: defined once under Secrets, shared by any endpoint that names it.
  const choice = h("select#secret-name", { name: "secretName" },
    secrets.map((s) => h("option", { value: s.name, selected: s.name === endpoint?.secretName },
      `${s.name} · ${s.maskedValue}`)));
  const namedPart = h("div.field.secret-part", {},
    h("label", { for: "secret-name" }, "Named secret"),
    choice,
    h("p.help", {}, "Every endpoint naming it signs with its current value. Add, rotate or delete named secrets under ",
      h("a", { href: "#/secrets" }, "Secrets"), "."));

  function sync() {
    ownPart.hidden = named.checked;
    namedPart.hidden = !named.checked;
  }
  sync();
  style.addEventListener("change", () => { showHint(); changed(); });
  for (const radio of [own, named]) radio.addEventListener("change", () => { sync(); changed(); });
  choice.addEventListener("change", changed);
  secret.addEventListener("input", changed);
  removeSecret?.addEventListener("change", changed);

  const element = h("fieldset", {}, h("legend", {}, "Signing"),
    h("div.field", {}, h("label", { for: "signature-style" }, "Signature style"), style, hint),
    h("div.choices", { role: "radiogroup", "aria-label": "Secret" },
      h("label.inline", {}, own, "Its own secret token"),
      h("label.inline", { title: secrets.length ? null : "The organization has no named secrets yet" },
        named, "A named secret")),
    ownPart,
    namedPart);

  return {
    element,
    style: () => style.value,
    /** Whether deliveries would carry a secret, so that the preview shows the signatures. */
    withSecret: () => (named.checked
      ? Boolean(choice.value)
      : Boolean(secret.value) || (Boolean(endpoint?.maskedSecretToken) && !removeSecret?.checked)),
    /** Adds the signing fields to a create or update input. */
    apply(input) {
      input.signatureStyle = style.value;
      if (named.checked) {
        // Naming a secret drops the endpoint's own.
        input.secretName = choice.value;
        return;
      }
      if (removeSecret?.checked) input.secretToken = "";
      else if (secret.value) input.secretToken = secret.value;
      if (endpoint?.secretName) input.secretName = "";
    },
    clear() {
      secret.value = "";
    },
  };
}
