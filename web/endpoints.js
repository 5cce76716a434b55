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

/** Queues a test delivery: a ping when `event` is empty, else `build`, `task` or a published type. */
export async function sendTest(endpoint, event) {
  const data = await gql(
    "mutation($id: ID!, $event: String) { sendTestWebHook(input: {endpointId: $id, event: $event}) { delivery { id } } }",
    { id: endpoint.id, event: event || null },
  );
  toast(`A test ${event || "ping"} was queued; it shows in the delivery log.`);
  return data.sendTestWebHook.delivery.id;
}

export function sendPing(endpoint) {
  return sendTest(endpoint, null);
}

/** The test kinds an endpoint can be sent: a ping, a build, a task, or a published type it lists. */
function testKinds(endpoint) {
  const published = endpoint.events.includes("PUBLISHED") ? endpoint.publishedEvents : [];
  return [["", "ping"], ["build", "build"], ["task", "task"], ...published.map((type) => [type, `${type} (published)`])];
}

/** A choice of event kind and a "Send test" button; `after` runs once the test is queued. */
export function sendTestControl(endpoint, after) {
  const kind = h("select.test-event", {
    "aria-label": `Test event for ${endpoint.webhookURL}`,
    disabled: !endpoint.enabled,
  }, testKinds(endpoint).map(([value, label]) => h("option", { value }, label)));
  const send = h("button.ghost.send-test", {
    type: "button",
    disabled: !endpoint.enabled,
    title: endpoint.enabled
      ? "Queue a test delivery of the chosen kind, rendered as this endpoint sends it"
      : "Enable the endpoint to send it a test",
    onclick: async () => {
      send.disabled = true;
      try {
        await sendTest(endpoint, kind.value);
        after?.();
      } catch (error) {
        toast(error.message, "error");
      } finally {
        send.disabled = false;
      }
    },
  }, "Send test");
  return h("span.send-test-group", {}, kind, send);
}

function eventsText(endpoint) {
  const { events, publishedEvents, conditions } = endpoint;
  const kinds = !events.length ? "builds and tasks" : events.map((e) => (e === "PUBLISHED"
    ? `published (${publishedEvents.length ? publishedEvents.join(", ") : "every type"})`
    : e.toLowerCase().replace("_", " "))).join(", ");
  if (!conditions?.length) return kinds;
  return `${kinds}; only ${conditions.map((c) => c.toLowerCase().replaceAll("_", " ")).join(", ")}`;
}

function secretText(endpoint) {
  if (endpoint.secretName) return ["named ", h("code", {}, endpoint.secretName)];
  if (endpoint.maskedSecretToken) return h("code", {}, endpoint.maskedSecretToken);
  return h("span.warn", {}, "none — unsigned");
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
      h("div", {}, h("dt", {}, "Events"), h("dd", {}, eventsText(endpoint))),
      h("div", {}, h("dt", {}, "Format"), h("dd", {}, endpoint.payloadFormat)),
      h("div", {}, h("dt", {}, "Selection"), h("dd", {}, endpoint.payloadQuery ? "custom" : "Cirrus default")),
      h("div", {}, h("dt", {}, "Style"), h("dd.style", {}, endpoint.signatureStyle)),
      h("div", {}, h("dt", {}, "Secret"), h("dd", {}, secretText(endpoint))),
      endpoint.headers.length ? h("div", {}, h("dt", {}, "Headers"),
        h("dd", {}, endpoint.headers.map((header) => header.name).join(", "))) : null,
      h("div", {}, h("dt", {}, "Last delivery"),
        h("dd.last", {}, last
          ? h("a", { href: `#/deliveries/${last.id}` }, stateBadge(last.state), " ", when(last.timestamp))
          : h("span.muted", {}, "none yet"))),
    ),
    h("div.actions", {},
      h("a.button", { href: `#/endpoints/${endpoint.id}` }, "Edit"),
      h("a.button.ghost", { href: `#/deliveries/endpoint/${endpoint.id}` }, "Deliveries"),
      sendTestControl(endpoint, refresh),
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
