// The endpoint list: every webhook endpoint with its last delivery, and quick actions.

import { gql, ENDPOINT_FIELDS } from "./api.js";
import { h, toast, confirmAction, when, stateBadge, errorBox } from "./ui.js";

export async function loadEndpoints() {
  const data = await gql(`{ viewer { webhookSettings { endpoints { ${ENDPOINT_FIELDS} } } } }`);
  return data.viewer.webhookSettings.endpoints;
}

export function deleteEndpoint(endpoint) {
  return confirmAction(
    "Delete this endpoint?",
    `${endpoint.webhookURL} and its whole delivery log will be deleted. Receivers get nothing more from it.`,
  ).then(async (yes) => {
    if (!yes) return false;
    await gql("mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { deletedId } }", { id: endpoint.id });
    toast("The endpoint was deleted.");
    return true;
  });
}

export async function sendPing(endpoint) {
  const data = await gql(
    "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id } } }",
    { id: endpoint.id },
  );
  toast("A ping was queued; it shows in the delivery log.");
  return data.sendTestWebHook.delivery.id;
}

function eventsText(events) {
  return events.length ? events.map((e) => e.toLowerCase().replace("_", " ")).join(", ") : "builds and tasks";
}

function endpointCard(endpoint, refresh) {
  const last = endpoint.lastDelivery;
  const toggle = h("input", {
    type: "checkbox",
    role: "switch",
    checked: endpoint.enabled,
    "aria-label": `Send deliveries to ${endpoint.webhookURL}`,
    onchange: async (event) => {
      const enabled = event.target.checked;
      try {
        await gql("mutation($id: ID!, $on: Boolean!) { updateWebHookEndpoint(input: {id: $id, enabled: $on}) { endpoint { id } } }",
          { id: endpoint.id, on: enabled });
        toast(enabled ? "The endpoint is enabled." : "The endpoint is disabled; nothing is sent to it.");
      } catch (error) {
        event.target.checked = !enabled;
        toast(error.message, "error");
      }
      refresh();
    },
  });
  return h("li.card.endpoint", { dataset: { id: endpoint.id } },
    h("div.endpoint-head", {},
      h("a.url", { href: `#/endpoints/${endpoint.id}` }, endpoint.webhookURL),
      h("label.switch", {}, toggle, h("span", { "aria-hidden": "true" }), endpoint.enabled ? "On" : "Off"),
    ),
    h("dl.facts", {},
      h("div", {}, h("dt", {}, "Events"), h("dd", {}, eventsText(endpoint.events))),
      h("div", {}, h("dt", {}, "Format"), h("dd", {}, endpoint.payloadFormat)),
      h("div", {}, h("dt", {}, "Selection"), h("dd", {}, endpoint.payloadQuery ? "custom" : "Cirrus default")),
      h("div", {}, h("dt", {}, "Secret"),
        h("dd", {}, endpoint.maskedSecretToken ? h("code", {}, endpoint.maskedSecretToken) : h("span.warn", {}, "none — unsigned"))),
      h("div", {}, h("dt", {}, "Last delivery"),
        h("dd.last", {}, last
          ? h("a", { href: `#/deliveries/${last.id}` }, stateBadge(last.state), " ", when(last.timestamp))
          : h("span.muted", {}, "none yet"))),
    ),
    h("div.actions", {},
      h("a.button", { href: `#/endpoints/${endpoint.id}` }, "Edit"),
      h("a.button.ghost", { href: `#/deliveries/endpoint/${endpoint.id}` }, "Deliveries"),
      h("button.ghost", {
        type: "button",
        disabled: !endpoint.enabled,
        title: endpoint.enabled ? "Queue a ping delivery" : "Enable the endpoint to ping it",
        onclick: async () => {
          try {
            await sendPing(endpoint);
            refresh();
          } catch (error) {
            toast(error.message, "error");
          }
        },
      }, "Send ping"),
      h("button.ghost.danger-text", {
        type: "button",
        onclick: async () => {
          try {
            if (await deleteEndpoint(endpoint)) refresh();
          } catch (error) {
            toast(error.message, "error");
          }
        },
      }, "Delete"),
    ),
  );
}

export async function endpointsView({ main }) {
  const list = h("ul.endpoints", { "aria-live": "polite" });
  const section = h("section", {},
    h("div.page-head", {},
      h("div", {}, h("h1", {}, "Endpoints"),
        h("p.muted", {}, "Where Herald sends a signed POST for every build and task event.")),
      h("a.button.primary#new-endpoint", { href: "#/endpoints/new" }, "New endpoint")),
    list);
  main.replaceChildren(section);
  let stopped = false;
  async function refresh() {
    try {
      const endpoints = await loadEndpoints();
      if (stopped) return;
      list.replaceChildren(...(endpoints.length
        ? endpoints.map((endpoint) => endpointCard(endpoint, refresh))
        : [h("li.card.empty", {}, h("p", {}, "No endpoints yet."),
            h("p.muted", {}, "Add one to start receiving webhooks."))]));
    } catch (error) {
      if (!stopped) list.replaceChildren(h("li", {}, errorBox(error)));
    }
  }
  await refresh();
  return () => {
    stopped = true;
  };
}
