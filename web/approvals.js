// Approval hooks: the organization's services Herald asks before it records a build or task,
// a form to add one, a test call per hook, and the approval log (every call, its request and
// its answer), refreshed every few seconds.

import { gql } from "./api.js";
import { h, toast, confirmAction, when, stateBadge, errorBox, codeBlock, pretty } from "./ui.js";

const PAGE_SIZE = 20;
const POLL_MS = 3000;
const POINTS = [["BUILD_CREATE", "Build created"], ["TASK_CREATE", "Task created"]];
const STYLES = ["CIRRUS", "GITHUB", "JOBSERV", "GITLAB", "CODEUP", "NONE"];
const UNAVAILABLE = [
  ["REJECT", "Reject the change (fail closed)"],
  ["APPROVE", "Approve the change (fail open)"],
  ["HOLD", "Hold it for a person to decide"],
];

const HOOK_FIELDS = "id url maskedSecretToken secretName signatureStyle on timeoutMs whenUnavailable enabled";
const CALL_FIELDS = "id hookId point timestamp request status response duration decision reason error workId";

const LOG_QUERY = `query($first: Int, $after: String, $hookId: ID) {
  viewer { approvalCalls(first: $first, after: $after, hookId: $hookId) {
    edges { node { ${CALL_FIELDS} } }
    pageInfo { hasNextPage endCursor } } } }`;

function pointText(point) {
  return POINTS.find(([value]) => value === point)?.[1] ?? point;
}

function secretText(hook) {
  if (hook.signatureStyle === "NONE") return h("span.warn", {}, "unsigned (NONE)");
  const secret = hook.secretName ? h("span", {}, "named ", h("code", {}, hook.secretName))
    : hook.maskedSecretToken ? h("code", {}, hook.maskedSecretToken)
    : h("span.warn", {}, "no secret — unsigned");
  return [hook.signatureStyle, " · ", secret];
}

/** One call's outcome on a line: its decision, status, time, and work id or reason. */
function outcome(call) {
  return h("span.outcome", {},
    stateBadge(call.decision), " ",
    call.status === null ? "no answer" : `HTTP ${call.status}`, ` · ${call.duration} ms`,
    call.workId ? h("span", {}, " · work id ", h("code", {}, call.workId)) : null,
    call.reason ? ` · “${call.reason}”` : null,
    call.error ? h("span.attempt-error", {}, ` · ${call.error}`) : null);
}

function hookCard(hook, onChange) {
  const result = h("p.test-result", { "aria-live": "polite" });
  const toggle = h("input", {
    type: "checkbox",
    role: "switch",
    checked: hook.enabled,
    "aria-label": `Ask ${hook.url}`,
    onchange: async (event) => {
      const enabled = event.target.checked;
      try {
        await gql("mutation($id: ID!, $on: Boolean!) { updateApprovalHook(input: {id: $id, enabled: $on}) { hook { id } } }",
          { id: hook.id, on: enabled });
        toast(enabled ? "The hook is asked again." : "The hook is disabled; changes no longer wait for it.");
      } catch (error) {
        event.target.checked = !enabled;
        toast(error.message, "error");
      }
      onChange();
    },
  });
  const point = h("select.test-point", { "aria-label": `Point to test ${hook.url} at` },
    hook.on.map((value) => h("option", { value }, pointText(value))));
  const test = h("button.ghost.test-hook", {
    type: "button",
    title: "Call the hook with a sample request now; nothing is recorded but the call",
    onclick: async () => {
      test.disabled = true;
      result.replaceChildren("Calling…");
      try {
        const data = await gql(`mutation($id: ID!, $point: ApprovalPoint) {
          testApprovalHook(input: {id: $id, point: $point}) { call { ${CALL_FIELDS} } } }`,
        { id: hook.id, point: point.value || null });
        result.replaceChildren(outcome(data.testApprovalHook.call));
        onChange(data.testApprovalHook.call.id);
      } catch (error) {
        result.replaceChildren(h("span.attempt-error", {}, error.message));
      } finally {
        test.disabled = false;
      }
    },
  }, "Test");
  return h("li.card.endpoint.approval-hook", { dataset: { id: hook.id } },
    h("div.endpoint-head", {},
      h("span.url", {}, hook.url),
      h("label.switch", {}, toggle, h("span", { "aria-hidden": "true" }), hook.enabled ? "On" : "Off")),
    h("dl.facts", {},
      h("div", {}, h("dt", {}, "Asked at"), h("dd.points", {}, hook.on.map(pointText).join(", "))),
      h("div", {}, h("dt", {}, "Timeout"), h("dd", {}, `${hook.timeoutMs} ms`)),
      h("div", {}, h("dt", {}, "When unavailable"), h("dd.when-unavailable", {}, hook.whenUnavailable)),
      h("div", {}, h("dt", {}, "Signing"), h("dd", {}, secretText(hook)))),
    h("div.actions", {},
      hook.on.length > 1 ? point : null, test,
      h("button.ghost.danger-text", {
        type: "button",
        onclick: async () => {
          const yes = await confirmAction("Delete this approval hook?",
            `${hook.url} is no longer asked; its calls stay in the approval log.`);
          if (!yes) return;
          try {
            await gql("mutation($id: ID!) { deleteApprovalHook(input: {id: $id}) { deletedId } }", { id: hook.id });
            toast("The approval hook was deleted.");
            onChange();
          } catch (error) {
            toast(error.message, "error");
          }
        },
      }, "Delete")),
    result);
}

function hookForm(viewer, onSaved) {
  const url = h("input#approval-url", {
    type: "url", required: true, autocomplete: "off", spellcheck: "false",
    placeholder: "https://gate.example.com/herald",
  });
  const secret = h("input#approval-secret", { type: "password", autocomplete: "new-password", spellcheck: "false" });
  const style = h("select#approval-style", {}, STYLES.map((value) => h("option", { value }, value)));
  const points = POINTS.map(([value, label]) => {
    const id = `point-${value.toLowerCase()}`;
    return h("label.inline", { for: id },
      h("input", { type: "checkbox", id, value, defaultChecked: value === "BUILD_CREATE" }), label);
  });
  const timeout = h("input#approval-timeout", { type: "number", min: "100", max: "10000", step: "100", value: "3000" });
  const unavailable = h("select#when-unavailable", {}, UNAVAILABLE.map(([value, label]) => h("option", { value }, label)));
  const problem = h("div#approval-form-error", { "aria-live": "assertive" });
  const form = h("form.card#approval-form", {
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      problem.replaceChildren();
      const on = points.map((label) => label.querySelector("input")).filter((box) => box.checked).map((box) => box.value);
      try {
        await gql("mutation($input: CreateApprovalHookInput!) { createApprovalHook(input: $input) { hook { id } } }", {
          input: {
            ownerUid: viewer.uid,
            url: url.value.trim(),
            secretToken: secret.value || null,
            signatureStyle: style.value,
            on,
            timeoutMs: timeout.value.trim() === "" ? null : Math.round(Number(timeout.value)),
            whenUnavailable: unavailable.value,
          },
        });
        toast("The approval hook was added; Herald asks it from now on.");
        form.reset();
        onSaved();
      } catch (error) {
        problem.replaceChildren(h("p.error-box", { role: "alert" }, error.message));
      }
    },
  },
    h("h2", {}, "Add an approval hook"),
    problem,
    h("div.field", {}, h("label", { for: "approval-url" }, "URL"), url,
      h("p.help", {}, "Herald POSTs each question here and waits for ",
        h("code", {}, "{\"approved\": true}"), ", ", h("code", {}, "{\"hold\": true}"), " or a rejection.")),
    h("div.field", {}, h("label", { for: "approval-secret" }, "Secret token"), secret,
      h("p.help", {}, "Signs each call as deliveries are signed. Write-only.")),
    h("div.field", {}, h("label", { for: "approval-style" }, "Signature style"), style),
    h("fieldset", {}, h("legend", {}, "Ask before"), h("div.choices", {}, points)),
    h("div.field", {}, h("label", { for: "approval-timeout" }, "Timeout (ms)"), timeout,
      h("p.help", {}, "100 to 10,000 ms. The CI engine's request waits this long at most.")),
    h("div.field", {}, h("label", { for: "when-unavailable" }, "Without a valid answer"), unavailable),
    h("div.actions", {}, h("button.primary#save-approval-hook", { type: "submit" }, "Add hook")));
  form.addEventListener("input", () => problem.replaceChildren());
  return form;
}

function callDetail(call, hook) {
  return h("article.card.delivery-detail.approval-call", { dataset: { id: call.id } },
    h("div.detail-head", {},
      h("div", {},
        h("h2", {}, `${pointText(call.point)} · ${call.decision.toLowerCase()}`),
        h("p.muted.mono", {}, call.id)),
      stateBadge(call.decision)),
    h("dl.facts", {},
      h("div", {}, h("dt", {}, "Time"), h("dd", {}, when(call.timestamp))),
      h("div", {}, h("dt", {}, "Hook"), h("dd.mono", {}, hook?.url ?? "deleted")),
      h("div", {}, h("dt", {}, "Answer"), h("dd", {}, call.status === null ? "none" : `HTTP ${call.status}`)),
      h("div", {}, h("dt", {}, "Duration"), h("dd", {}, `${call.duration} ms`)),
      call.workId ? h("div", {}, h("dt", {}, "Work id"), h("dd.mono", {}, call.workId)) : null,
      call.reason ? h("div", {}, h("dt", {}, "Reason"), h("dd", {}, call.reason)) : null),
    call.error ? h("p.attempt-error", {}, call.error) : null,
    h("h3", {}, "Request"),
    codeBlock(pretty(call.request), "Request body"),
    h("h3", {}, "Response"),
    codeBlock(pretty(call.response), "Response body"));
}

export async function approvalsView({ viewer, main }) {
  let hooks = [];
  let page = { edges: [], pageInfo: { hasNextPage: false } };
  const cursors = [null];
  let hookId = null;
  let open = null;
  let listJson = "";
  let stopped = false;

  const list = h("ul.endpoints.approval-hooks#approval-hooks", { "aria-live": "polite" });
  const filter = h("select#filter-hook", {
    onchange: () => { hookId = filter.value || null; cursors.length = 1; refreshLog(); },
  });
  const log = h("ul.delivery-list#approval-log");
  const newer = h("button.ghost", { type: "button", onclick: () => { cursors.pop(); refreshLog(); } }, "← Newer");
  const older = h("button.ghost", {
    type: "button",
    onclick: () => { cursors.push(page.pageInfo.endCursor); refreshLog(); },
  }, "Older →");
  const detail = h("div.detail#approval-detail", { "aria-live": "polite" });
  const live = h("span.live", { title: `Refreshes every ${POLL_MS / 1000} seconds` }, "live");

  main.replaceChildren(h("section", {},
    h("div.page-head", {},
      h("div", {}, h("h1", {}, "Approvals"),
        h("p.muted", {}, "Hooks Herald asks before it records a build or a task: they approve, hold or reject it. "
          + "Held builds wait under Builds for an admin's decision."))),
    h("div.split", {}, list, hookForm(viewer, () => refreshHooks())),
    h("div.page-head.log-head", {},
      h("div", {}, h("h2", {}, "Approval log ", live),
        h("p.muted", {}, "Every call, newest first, with its request and answer.")),
      h("div.filters", {}, h("label.sr-only", { for: "filter-hook" }, "Hook"), filter)),
    h("div.split.wide-detail", {},
      h("div.card.list-card", {}, log, h("div.pager", {}, newer, h("span.muted#approval-page"), older)),
      detail)));

  function row(call) {
    const hook = hooks.find((candidate) => candidate.id === call.hookId);
    return h("li", {},
      h("button.delivery-row.approval-row", {
        type: "button",
        dataset: { id: call.id },
        "aria-pressed": String(call.id === open?.id),
        onclick: () => { open = call; renderLog(true); showDetail(); },
      },
        stateBadge(call.decision),
        h("span.what", {}, h("b", {}, pointText(call.point)),
          call.reason ? ` — ${call.reason}` : null, call.error ? h("span.attempt-error", {}, ` — ${call.error}`) : null),
        h("span.where.mono", {}, hook?.url ?? "deleted hook"),
        h("span.tries", {}, `${call.status === null ? "no answer" : `HTTP ${call.status}`} · ${call.duration} ms`),
        when(call.timestamp)));
  }

  function renderLog(force = false) {
    const json = JSON.stringify([page, open?.id, hooks.length, Math.floor(Date.now() / 30000)]);
    if (!force && json === listJson) return;
    listJson = json;
    log.replaceChildren(...(page.edges.length
      ? page.edges.map(({ node }) => row(node))
      : [h("li.empty", {}, "No calls yet. They appear here when a build or task is created, or a hook is tested.")]));
    newer.disabled = cursors.length === 1;
    older.disabled = !page.pageInfo.hasNextPage;
    document.getElementById("approval-page").textContent = `page ${cursors.length}`;
  }

  function showDetail() {
    detail.replaceChildren(open
      ? callDetail(open, hooks.find((hook) => hook.id === open.hookId))
      : h("div.card.placeholder", {}, h("p.muted", {}, "Choose a call to see its request and answer.")));
  }

  async function refreshHooks(openCall) {
    try {
      const data = await gql(`{ viewer { approvalHooks { ${HOOK_FIELDS} } } }`);
      if (stopped) return;
      hooks = data.viewer.approvalHooks;
      list.replaceChildren(...(hooks.length
        ? hooks.map((hook) => hookCard(hook, (callId) => (callId ? refreshLog(callId) : refreshHooks())))
        : [h("li.card.empty", {}, h("p", {}, "No approval hooks yet."),
            h("p.muted", {}, "Until one is added, every build and task is recorded as the CI engine asks."))]));
      filter.replaceChildren(h("option", { value: "" }, "All hooks"),
        ...hooks.map((hook) => h("option", { value: hook.id, selected: hook.id === hookId }, hook.url)));
    } catch (error) {
      if (!stopped) list.replaceChildren(h("li", {}, errorBox(error)));
    }
    await refreshLog(openCall);
  }

  /** Reloads the log's page; `openCall` (an id) opens that call once it is listed. */
  async function refreshLog(openCall) {
    try {
      const data = await gql(LOG_QUERY, { first: PAGE_SIZE, after: cursors.at(-1), hookId });
      if (stopped) return;
      page = data.viewer.approvalCalls;
      const listed = page.edges.map(({ node }) => node);
      const wanted = openCall ?? open?.id;
      const found = listed.find((call) => call.id === wanted);
      if (found && JSON.stringify(found) !== JSON.stringify(open)) {
        open = found;
        showDetail();
      }
      renderLog();
      live.classList.remove("stale");
    } catch (error) {
      if (stopped) return;
      live.classList.add("stale");
      log.replaceChildren(h("li", {}, errorBox(error)));
      listJson = "";
    }
  }

  showDetail();
  await refreshHooks();
  const timer = setInterval(() => { if (!document.hidden) refreshLog(); }, POLL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
