// Creating and editing an endpoint, with the payload selection checked and previewed live
// against a real build or task as the admin types.

import { gql, ENDPOINT_FIELDS, SECRET_FIELDS, DEFAULT_SELECTION, CIRRUS_DOCUMENTED_SELECTION } from "./api.js";
import { h, toast, errorBox, codeBlock, pretty } from "./ui.js";
import { deleteEndpoint, sendTestControl } from "./endpoints.js";
import { signingFields } from "./signing.js";
import { headersEditor } from "./headers.js";

const EVENTS = ["BUILD", "TASK", "AUDIT_EVENT", "PUBLISHED"];
/** The transition conditions, with what each sends. */
const CONDITIONS = {
  BROKEN: "failed after the branch's previous build passed",
  FIXED: "passed after the previous one failed",
  STILL_FAILING: "failed after the previous one failed",
  FIRST_FAILURE_ON_BRANCH: "failed, and none finished on its branch before",
};
/** Every payload format, with the shape of the body it sends. */
const FORMATS = {
  DATA: " {action, old_status?, data}",
  FLAT: " {action, repository, build, task} as Cirrus sends",
  RAW: " the selection's result, no envelope",
  SLACK: " a Slack message; the selection is not used",
};
const CHECK_DELAY_MS = 350;

/** Recent builds and their tasks, per repository, to preview against. */
async function loadBuilds() {
  const data = await gql(`{ viewer { repositories(first: 20) { edges { node { name
    builds(first: 5) { edges { node { id branch status tasks { id name status } } } } } } } } }`);
  return data.viewer.repositories.edges.map(({ node }) => ({
    name: node.name,
    builds: node.builds.edges.map((edge) => edge.node),
  }));
}

/** "line L, column C" in an error message, as numbers. */
export function position(message) {
  const match = /line (\d+), column (\d+)/.exec(message);
  return match ? { line: Number(match[1]), column: Number(match[2]) } : null;
}

/** A textarea with line numbers whose lines can be marked as wrong. */
function selectionEditor(initial) {
  const gutter = h("div.gutter", { "aria-hidden": "true" });
  const area = h("textarea#payload-query.code-input", {
    name: "payloadQuery",
    spellcheck: "false",
    autocomplete: "off",
    autocapitalize: "off",
    wrap: "off",
    rows: 14,
    "aria-describedby": "selection-status selection-help",
  });
  area.value = initial;
  let marked = null;
  function renumber() {
    const count = area.value.split("\n").length;
    if (gutter.childElementCount !== count) {
      gutter.replaceChildren(...Array.from({ length: count }, (_, i) => h("span", {}, i + 1)));
      if (marked) mark(marked);
    }
  }
  function mark(line) {
    gutter.querySelector(".bad")?.classList.remove("bad");
    marked = line;
    if (line) gutter.children[line - 1]?.classList.add("bad");
  }
  area.addEventListener("input", renumber);
  area.addEventListener("scroll", () => { gutter.scrollTop = area.scrollTop; });
  renumber();
  /** Puts the caret at a 1-based line and column. */
  function goTo({ line, column }) {
    const lines = area.value.split("\n");
    const offset = lines.slice(0, line - 1).reduce((sum, text) => sum + text.length + 1, 0)
      + Math.min(column - 1, (lines[line - 1] ?? "").length);
    area.focus();
    area.setSelectionRange(offset, offset);
  }
  return { element: h("div.editor", {}, gutter, area), area, mark, goTo };
}

function field(label, control, help) {
  return h("div.field", {}, h("label", { for: control.id }, label), control,
    help ? h("p.help", { id: `${control.id}-help` }, help) : null);
}

export async function editorView({ viewer, main }, id) {
  const [endpoint, repositories, secrets] = await Promise.all([
    id ? gql(`query($id: ID!) { webhookEndpoint(id: $id) { ${ENDPOINT_FIELDS} } }`, { id })
      .then((data) => data.webhookEndpoint) : null,
    loadBuilds(),
    gql(`{ viewer { webhookSecrets { ${SECRET_FIELDS} } } }`).then((data) => data.viewer.webhookSecrets),
  ]);
  if (id && !endpoint) {
    main.replaceChildren(errorBox(new Error(`There is no endpoint ${id}.`)));
    return null;
  }

  const url = h("input#webhook-url", {
    type: "url", name: "webhookURL", required: true, placeholder: "https://example.com/hooks/ci",
    value: endpoint?.webhookURL ?? "", autocomplete: "off", spellcheck: "false",
  });
  const signing = signingFields(endpoint, secrets, schedule);
  const headers = headersEditor(endpoint?.headers ?? [], schedule);
  const events = EVENTS.map((event) => h("input", {
    type: "checkbox", name: "events", value: event, id: `event-${event.toLowerCase()}`,
    checked: endpoint?.events.includes(event) ?? false,
  }));
  const publishedTypes = h("input#published-events", {
    type: "text", name: "publishedEvents", autocomplete: "off", spellcheck: "false", autocapitalize: "off",
    value: endpoint?.publishedEvents.join(", ") ?? "", placeholder: "deployment, release.created",
    "aria-describedby": "published-events-help",
  });
  const publishedField = field("Published event types", publishedTypes,
    "Comma separated, compared case-insensitively; empty means every type published with publishEvent.");
  const publishedBox = events.find((box) => box.value === "PUBLISHED");
  const syncPublished = () => { publishedField.hidden = !publishedBox.checked; };
  publishedBox.addEventListener("change", syncPublished);
  syncPublished();
  const conditions = Object.keys(CONDITIONS).map((condition) => h("input", {
    type: "checkbox", name: "conditions", value: condition, id: `condition-${condition.toLowerCase().replaceAll("_", "-")}`,
    checked: endpoint?.conditions.includes(condition) ?? false,
  }));
  const formats = Object.keys(FORMATS).map((format) => h("input", {
    type: "radio", name: "payloadFormat", value: format, id: `format-${format.toLowerCase()}`,
    checked: (endpoint?.payloadFormat ?? "DATA") === format,
  }));
  const enabled = h("input#enabled", { type: "checkbox", role: "switch", checked: endpoint?.enabled ?? true });
  const insecure = h("input#insecure-ssl", { type: "checkbox", checked: endpoint?.insecureSsl ?? false });
  const editor = selectionEditor(endpoint?.payloadQuery ?? DEFAULT_SELECTION);
  const status = h("p.selection-status#selection-status", { "aria-live": "polite" });
  const formError = h("div#form-error", { "aria-live": "assertive" });

  // The preview: a build (and optionally one of its tasks) to render the selection against.
  const builds = repositories.flatMap((repo) => repo.builds.map((build) => ({ ...build, repo: repo.name })));
  const buildSelect = h("select#preview-build", {},
    repositories.filter((repo) => repo.builds.length).map((repo) => h("optgroup", { label: repo.name },
      repo.builds.map((build) => h("option", { value: build.id },
        `#${build.id} · ${build.branch} · ${build.status.toLowerCase()}`)))));
  const taskSelect = h("select#preview-task", {});
  const previewHeaders = h("div#preview-headers");
  const previewBody = h("div#preview-body");
  function fillTasks() {
    const build = builds.find((b) => b.id === buildSelect.value);
    taskSelect.replaceChildren(h("option", { value: "" }, "the build itself (build event)"),
      ...(build?.tasks ?? []).map((task) => h("option", { value: task.id },
        `${task.name} · ${task.status.toLowerCase()} (task event)`)));
  }
  fillTasks();

  const format = () => formats.find((radio) => radio.checked).value;
  const selection = () => editor.area.value;
  const isDefault = () => selection().trim() === DEFAULT_SELECTION.trim();

  function showSelectionError(error) {
    const at = position(error.message);
    editor.mark(at?.line ?? null);
    editor.area.setAttribute("aria-invalid", "true");
    status.className = "selection-status bad";
    status.replaceChildren(h("span", {}, error.message));
    if (at) {
      status.append(h("button.ghost.small", { type: "button", onclick: () => editor.goTo(at) },
        `Go to line ${at.line}`));
    }
    previewBody.classList.add("stale");
  }
  function showSelectionOk(text) {
    editor.mark(null);
    editor.area.removeAttribute("aria-invalid");
    status.className = "selection-status ok";
    status.textContent = text;
  }

  let sequence = 0;
  let timer = null;
  async function check() {
    const mine = ++sequence;
    if (!selection().trim()) {
      showSelectionOk("Empty: Cirrus's default selection is used.");
    }
    if (!buildSelect.value) {
      status.className = "selection-status";
      status.textContent = "No builds yet: the selection is checked when you save.";
      previewBody.replaceChildren(h("p.muted", {},
        "Record a build (createBuild) to preview the exact body an endpoint receives."));
      return;
    }
    status.className = "selection-status pending";
    status.textContent = "Checking…";
    try {
      const data = await gql(`mutation($input: PreviewWebHookPayloadInput!) {
        previewWebHookPayload(input: $input) { body headers { name maskedValue } } }`, {
        input: {
          ownerUid: viewer.uid,
          payloadQuery: selection(),
          payloadFormat: format(),
          buildId: buildSelect.value,
          taskId: taskSelect.value || null,
          signatureStyle: signing.style(),
          withSecret: signing.withSecret(),
          headers: headers.forPreview(),
        },
      });
      if (mine !== sequence) return;
      const { body, headers: sent } = data.previewWebHookPayload;
      if (selection().trim()) showSelectionOk(isDefault() ? "The default selection: what Cirrus CI sends." : "The selection is valid.");
      previewHeaders.replaceChildren(codeBlock(
        sent.map((header) => `${header.name}: ${header.maskedValue}`).join("\n"), "Preview of the request headers"));
      previewBody.classList.remove("stale");
      previewBody.replaceChildren(codeBlock(pretty(body), "Preview of the request body"));
    } catch (error) {
      if (mine !== sequence) return;
      if (error.code === "BAD_USER_INPUT") showSelectionError(error);
      else previewBody.replaceChildren(errorBox(error));
    }
  }
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(check, CHECK_DELAY_MS);
  }
  editor.area.addEventListener("input", schedule);
  buildSelect.addEventListener("change", () => { fillTasks(); check(); });
  taskSelect.addEventListener("change", check);
  formats.forEach((radio) => radio.addEventListener("change", check));

  async function save(event) {
    event.preventDefault();
    formError.replaceChildren();
    const chosen = events.filter((box) => box.checked).map((box) => box.value);
    const input = {
      events: chosen,
      publishedEvents: publishedTypes.value.split(",").map((type) => type.trim()).filter(Boolean),
      conditions: conditions.filter((box) => box.checked).map((box) => box.value),
      payloadFormat: format(),
      enabled: enabled.checked,
      insecureSsl: insecure.checked,
      headers: headers.values(),
    };
    signing.apply(input);
    const query = isDefault() ? "" : selection();
    if (endpoint) {
      input.id = endpoint.id;
      // The URL is shown masked; sending it back unchanged would replace its credentials.
      if (url.value !== endpoint.webhookURL) input.webhookURL = url.value.trim();
      input.payloadQuery = query;
    } else {
      Object.assign(input, { ownerUid: viewer.uid, webhookURL: url.value.trim() });
      if (query.trim()) input.payloadQuery = query;
    }
    const mutation = endpoint
      ? "mutation($input: UpdateWebHookEndpointInput!) { updateWebHookEndpoint(input: $input) { endpoint { id } } }"
      : "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }";
    const button = event.submitter;
    if (button) button.disabled = true;
    try {
      await gql(mutation, { input });
      signing.clear();
      toast(endpoint ? "The endpoint was saved." : "The endpoint was created.");
      location.hash = "#/endpoints";
    } catch (error) {
      formError.replaceChildren(h("p.error-box", { role: "alert" }, `Nothing was saved: ${error.message}`));
      if (error.code === "BAD_USER_INPUT" && position(error.message)) showSelectionError(error);
      formError.scrollIntoView({ block: "nearest" });
    } finally {
      if (button) button.disabled = false;
    }
  }

  const form = h("form.card.endpoint-form#endpoint-form", { onsubmit: save, novalidate: true },
    formError,
    field("Payload URL", url, "Receives a POST for every event. Credentials in the URL are sent as HTTP Basic authentication and never shown again."),
    signing.element,
    h("fieldset", {}, h("legend", {}, "Events"),
      h("div.choices", {}, events.map((box) => h("label.inline", {}, box, box.value.toLowerCase().replace("_", " ")))),
      h("p.help", {}, "None checked means build and task events. Audit events (every change made to the organization, as ",
        h("code", {}, "X-Cirrus-Event: audit_event"), ") and published events go only to endpoints that check them."),
      publishedField),
    h("fieldset#conditions", {}, h("legend", {}, "Only when a branch changes"),
      h("div.choices", {}, conditions.map((box) => h("label.inline", { title: CONDITIONS[box.value] }, box,
        h("span", {}, h("b", {}, box.value.toLowerCase().replaceAll("_", " ")), ` ${CONDITIONS[box.value]}`)))),
      h("p.help", {}, "None checked sends every build and task event. Checked, a build (or task, against the tasks of its name) is sent only when its final status is one of these changes against the one of its repository and branch that finished before it. Audit, published and test events are not filtered.")),
    h("fieldset", {}, h("legend", {}, "Payload format"),
      h("div.choices", {}, formats.map((radio) =>
        h("label.inline", {}, radio, h("span", {}, h("b", {}, radio.value), FORMATS[radio.value]))))),
    h("div.field", {},
      h("div.label-row", {},
        h("label", { for: "payload-query" }, "Payload selection"),
        h("span.buttons", {},
          h("button.ghost.small#cirrus-documented-selection", { type: "button", onclick: () => {
            editor.area.value = CIRRUS_DOCUMENTED_SELECTION;
            editor.area.dispatchEvent(new Event("input"));
          }, title: "The default selection of Cirrus CI's documentation, field for field (CIRRUS_DOCUMENTED)" },
          "Cirrus's documented selection"),
          h("button.ghost.small#reset-selection", { type: "button", onclick: () => {
            editor.area.value = DEFAULT_SELECTION;
            editor.area.dispatchEvent(new Event("input"));
          } }, "Reset to default"))),
      h("p.help#selection-help", {}, "A GraphQL query over Herald's schema with ",
        h("code", {}, "$repositoryId"), ", ", h("code", {}, "$buildId"), " and ", h("code", {}, "$taskId"),
        " (null for build events), or a bare selection such as ", h("code", {}, "build(id: $buildId) { id status }"), "."),
      editor.element,
      status),
    headers.element,
    h("div.choices", {},
      h("label.inline", {}, enabled, "Enabled"),
      h("label.inline", {}, insecure, "Skip TLS certificate checks")),
    h("div.actions", {},
      h("button.primary#save-endpoint", { type: "submit" }, endpoint ? "Save changes" : "Create endpoint"),
      h("a.button.ghost", { href: "#/endpoints" }, "Cancel"),
      endpoint ? h("span.spacer") : null,
      endpoint ? sendTestControl(endpoint) : null,
      endpoint ? h("button.danger", { type: "button", onclick: async () => {
        try { if (await deleteEndpoint(endpoint)) location.hash = "#/endpoints"; } catch (error) { toast(error.message, "error"); }
      } }, "Delete") : null),
  );

  // A refused save's message stays until the admin changes something.
  form.addEventListener("input", () => formError.replaceChildren());

  const preview = h("aside.card.preview", { "aria-labelledby": "preview-title" },
    h("h2#preview-title", {}, "Live preview"),
    h("p.help", {}, "The exact request this endpoint would send for the created event of:"),
    h("div.preview-pick", {}, field("Build", buildSelect), field("Event", taskSelect)),
    h("h3", {}, "Headers"),
    previewHeaders,
    h("h3", {}, "Body"),
    previewBody);

  main.replaceChildren(h("section", {},
    h("div.page-head", {},
      h("div", {}, h("p.crumbs", {}, h("a", { href: "#/endpoints" }, "Endpoints"), " / "),
        h("h1", {}, endpoint ? "Edit endpoint" : "New endpoint"))),
    h("div.split", {}, form, preview)));
  if (!endpoint) url.focus();
  check();
  return () => {
    clearTimeout(timer);
    sequence += 1;
  };
}
