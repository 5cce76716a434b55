// The delivery log: newest first, filtered by endpoint and state, paged, refreshed every few
// seconds; each delivery opens to its request and every attempt's response.

import { gql, DELIVERY_FIELDS } from "./api.js";
import { h, toast, when, stateBadge, errorBox, codeBlock, pretty } from "./ui.js";
import { loadEndpoints, sendPing } from "./endpoints.js";

const PAGE_SIZE = 20;
const POLL_MS = 3000;
const STATES = ["PENDING", "RETRYING", "DELIVERED", "FAILED"];

const LIST_QUERY = `query($first: Int, $after: String, $endpointId: ID, $state: WebHookDeliveryState) {
  viewer { webhookDeliveries(first: $first, after: $after, endpointId: $endpointId, state: $state) {
    edges { node { ${DELIVERY_FIELDS} } }
    pageInfo { hasNextPage endCursor } } } }`;

/** The request as it went on the wire; the signatures need the secret, which is never shown. */
function requestHeaders(delivery, endpoint) {
  const lines = [
    `POST ${endpoint?.webhookURL ?? "(deleted endpoint)"}`,
    "Content-Type: application/json",
    "User-Agent: Herald/<version>",
    `X-Cirrus-Event: ${delivery.event}`,
    `X-Cirrus-Delivery: ${delivery.id}`,
    `X-Cirrus-Timestamp: ${delivery.timestamp}`,
  ];
  if (endpoint?.maskedSecretToken) lines.push("X-Cirrus-Signature: <hex HMAC-SHA256 of the body with the secret>");
  lines.push(`webhook-id: ${delivery.id}`, "webhook-timestamp: <the attempt's time, in seconds>");
  if (endpoint?.maskedSecretToken) lines.push("webhook-signature: v1,<base64 HMAC-SHA256 with the secret>");
  return lines.join("\n");
}

function attemptCard(attempt) {
  const ok = attempt.status !== null && attempt.status >= 200 && attempt.status < 300;
  return h("li.attempt", { dataset: { number: attempt.number } },
    h("div.attempt-head", {},
      h("b", {}, `Attempt ${attempt.number}`),
      h(`span.badge.${ok ? "state-delivered" : "state-failed"}`, {},
        attempt.status === null ? "no answer" : `HTTP ${attempt.status}`),
      h("span.muted", {}, `${attempt.duration} ms`),
      when(attempt.timestamp)),
    attempt.error ? h("p.attempt-error", {}, attempt.error) : null,
    h("details", {}, h("summary", {}, "Response headers"),
      codeBlock(pretty(attempt.responseHeaders), `Response headers of attempt ${attempt.number}`)),
    h("details", { open: true }, h("summary", {}, "Response body"),
      codeBlock(pretty(attempt.responseData), `Response body of attempt ${attempt.number}`)));
}

function detailView(delivery, endpoint, onChange) {
  const redeliver = h("button.primary#redeliver", {
    type: "button",
    onclick: async () => {
      redeliver.disabled = true;
      try {
        await gql("mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
          { id: delivery.id });
        toast("Redelivery queued: the same id and body, in a new attempt.");
        onChange();
      } catch (error) {
        toast(error.message, "error");
      } finally {
        redeliver.disabled = false;
      }
    },
  }, "Redeliver");
  return h("article.card.delivery-detail", { "aria-labelledby": "delivery-title", dataset: { id: delivery.id } },
    h("div.detail-head", {},
      h("div", {},
        h("h2#delivery-title", {}, `${delivery.event} · ${delivery.action}`),
        h("p.muted.mono", {}, delivery.id)),
      stateBadge(delivery.state)),
    h("dl.facts", {},
      h("div", {}, h("dt", {}, "Event time"), h("dd", {}, when(delivery.timestamp))),
      h("div", {}, h("dt", {}, "Attempts"), h("dd", {}, delivery.attempts)),
      h("div", {}, h("dt", {}, "Next attempt"), h("dd", {}, when(delivery.nextAttemptTimestamp))),
      h("div", {}, h("dt", {}, "Endpoint"), h("dd.mono", {}, endpoint?.webhookURL ?? "deleted"))),
    h("div.actions", {}, redeliver),
    h("h3", {}, "Request"),
    codeBlock(requestHeaders(delivery, endpoint), "Request headers"),
    codeBlock(pretty(delivery.payload.data), "Request body"),
    h("h3", {}, `Responses (${delivery.attemptLog.length})`),
    delivery.attemptLog.length
      ? h("ol.attempts", {}, [...delivery.attemptLog].reverse().map(attemptCard))
      : h("p.muted", {}, "No attempt yet; the worker sends it shortly."));
}

export async function deliveriesView({ main }, { endpointId = null, openId = null } = {}) {
  const endpoints = await loadEndpoints();
  const byId = new Map(endpoints.map((e) => [e.id, e]));
  const filters = { endpointId, state: null };
  const cursors = [null];
  let page = { edges: [], pageInfo: { hasNextPage: false } };
  let open = null;
  let openJson = "";
  let listJson = "";
  let stopped = false;

  const endpointSelect = h("select#filter-endpoint", {
    onchange: () => { filters.endpointId = endpointSelect.value || null; restart(); },
  }, h("option", { value: "" }, "All endpoints"),
    endpoints.map((e) => h("option", { value: e.id, selected: e.id === endpointId }, e.webhookURL)));
  const stateSelect = h("select#filter-state", {
    onchange: () => { filters.state = stateSelect.value || null; restart(); },
  }, h("option", { value: "" }, "Any state"), STATES.map((s) => h("option", { value: s }, s.toLowerCase())));
  const list = h("ul.delivery-list#delivery-list");
  const newer = h("button.ghost", { type: "button", onclick: () => { cursors.pop(); refresh(); } }, "← Newer");
  const older = h("button.ghost", {
    type: "button",
    onclick: () => { cursors.push(page.pageInfo.endCursor); refresh(); },
  }, "Older →");
  const pager = h("div.pager", {}, newer, h("span.muted#page-number"), older);
  const detail = h("div.detail#delivery-detail", { "aria-live": "polite" });
  const live = h("span.live", { title: `Refreshes every ${POLL_MS / 1000} seconds` }, "live");
  const ping = h("button.ghost", {
    type: "button",
    onclick: async () => {
      const endpoint = byId.get(filters.endpointId);
      if (!endpoint) return toast("Choose an endpoint to ping.", "error");
      try {
        open = await sendPing(endpoint);
        openJson = "";
        refresh();
      } catch (error) {
        toast(error.message, "error");
      }
    },
  }, "Send ping");

  main.replaceChildren(h("section", {},
    h("div.page-head", {},
      h("div", {}, h("h1", {}, "Deliveries ", live),
        h("p.muted", {}, "Newest first. Every attempt is kept with its response.")),
      h("div.filters", {},
        h("label.sr-only", { for: "filter-endpoint" }, "Endpoint"), endpointSelect,
        h("label.sr-only", { for: "filter-state" }, "State"), stateSelect, ping)),
    h("div.split.wide-detail", {}, h("div.card.list-card", {}, list, pager), detail)));

  function restart() {
    cursors.length = 1;
    ping.disabled = !filters.endpointId;
    refresh();
  }

  function row(delivery) {
    const endpoint = byId.get(delivery.endpointId);
    return h("li", {},
      h("button.delivery-row", {
        type: "button",
        dataset: { id: delivery.id },
        "aria-pressed": String(delivery.id === open),
        onclick: () => { open = delivery.id; openJson = ""; renderList(true); showDetail(); },
      },
        stateBadge(delivery.state),
        h("span.what", {}, h("b", {}, delivery.event), " ", delivery.action),
        h("span.where.mono", {}, endpoint?.webhookURL ?? "deleted endpoint"),
        h("span.tries", {}, `${delivery.attempts} ${delivery.attempts === 1 ? "attempt" : "attempts"}`),
        when(delivery.timestamp)));
  }

  function renderList(force = false) {
    const json = JSON.stringify([page, open, Math.floor(Date.now() / 30000)]);
    if (!force && json === listJson) return;
    listJson = json;
    // Keep keyboard focus on the same delivery across refreshes.
    const focused = document.activeElement?.dataset?.id;
    list.replaceChildren(...(page.edges.length
      ? page.edges.map(({ node }) => row(node))
      : [h("li.empty", {}, "No deliveries yet. They appear here as soon as an event is recorded.")]));
    if (focused) list.querySelector(`[data-id="${CSS.escape(focused)}"]`)?.focus();
    newer.disabled = cursors.length === 1;
    older.disabled = !page.pageInfo.hasNextPage;
    document.getElementById("page-number").textContent = `page ${cursors.length}`;
  }

  async function showDetail() {
    if (!open) {
      detail.replaceChildren(h("div.card.placeholder", {}, h("p.muted", {}, "Choose a delivery to see its request and responses.")));
      return;
    }
    const id = open;
    try {
      const data = await gql(`query($id: ID!) { webhookDelivery(id: $id) { ${DELIVERY_FIELDS} } }`, { id });
      if (stopped || id !== open) return;
      const delivery = data.webhookDelivery;
      const json = JSON.stringify(delivery);
      if (json === openJson) return;
      openJson = json;
      // Re-rendering would close what the reader opened; keep the open/closed state.
      const closed = [...detail.querySelectorAll("details")].map((d) => !d.open);
      const focusedId = document.activeElement?.id;
      detail.replaceChildren(delivery
        ? detailView(delivery, byId.get(delivery.endpointId), refresh)
        : errorBox(new Error(`There is no delivery ${id}.`)));
      if (closed.length) [...detail.querySelectorAll("details")].forEach((d, i) => { if (i < closed.length) d.open = !closed[i]; });
      if (focusedId) document.getElementById(focusedId)?.focus();
    } catch (error) {
      if (!stopped) detail.replaceChildren(errorBox(error));
    }
  }

  async function refresh() {
    try {
      const data = await gql(LIST_QUERY, {
        first: PAGE_SIZE, after: cursors.at(-1), endpointId: filters.endpointId, state: filters.state,
      });
      if (stopped) return;
      page = data.viewer.webhookDeliveries;
      renderList();
      live.classList.remove("stale");
    } catch (error) {
      if (stopped) return;
      live.classList.add("stale");
      list.replaceChildren(h("li", {}, errorBox(error)));
      listJson = "";
    }
    await showDetail();
  }

  open = openId;
  ping.disabled = !filters.endpointId;
  await refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
