// The console's shell: sign-in, the organization header, and hash routing between views.

import { gql, token, setToken, onUnauthenticated } from "./api.js";
import { h, errorBox } from "./ui.js";
import { endpointsView } from "./endpoints.js";
import { editorView } from "./editor.js";
import { deliveriesView } from "./deliveries.js";
import { buildsView } from "./builds.js";
import { secretsView } from "./secrets.js";
import { approvalsView } from "./approvals.js";

const main = document.getElementById("main");
let viewer = null;
/** The running view's clean-up (stops polling, debounce timers). */
let teardown = null;

const MESSAGES = {
  UNAUTHENTICATED: "Herald did not accept this token",
  FORBIDDEN: "This token may not do that",
};

function signInView(problem) {
  const input = h("textarea#token", {
    name: "token",
    rows: 4,
    required: true,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "eyJhbGciOiJIUzI1NiIs…",
    "aria-describedby": "token-help",
  });
  const error = problem ? h("p.error-box#sign-in-error", { role: "alert" }, problem) : null;
  const form = h("form.card.sign-in", {
    onsubmit: async (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      setToken(value);
      await start();
    },
  },
    h("h1", {}, "Sign in to Herald"),
    h("p.muted#token-help", {},
      "Paste a token from ", h("code", {}, "herald token issue --org NAME --permission ADMIN"),
      ". It stays in this tab only and is forgotten when the tab closes."),
    error,
    h("label", { for: "token" }, "API token"),
    input,
    h("div.actions", {}, h("button.primary", { type: "submit" }, "Sign in")),
  );
  return h("section.center", {}, form);
}

function showSignIn(problem) {
  teardown?.();
  teardown = null;
  viewer = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  main.replaceChildren(signInView(problem));
  document.getElementById("token").focus();
}

/** Loads the organization for the stored token, then the view in the address. */
async function start() {
  if (!token()) return showSignIn();
  try {
    const data = await gql("{ viewer { uid name viewerPermission } }");
    viewer = data.viewer;
  } catch (error) {
    setToken(null);
    const prefix = MESSAGES[error.code];
    return showSignIn(prefix ? `${prefix}: ${error.message}` : error.message);
  }
  document.getElementById("org-name").textContent = viewer.name;
  const badge = document.getElementById("permission");
  badge.textContent = viewer.viewerPermission;
  badge.className = `badge perm-${viewer.viewerPermission.toLowerCase()}`;
  badge.title = isAdmin()
    ? "This token may manage webhooks and read deliveries."
    : "Webhook settings and deliveries need an ADMIN token.";
  for (const link of document.querySelectorAll("#nav [data-admin]")) link.hidden = !isAdmin();
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  route();
}

function isAdmin() {
  return viewer?.viewerPermission === "ADMIN";
}

function route() {
  if (!viewer) return;
  teardown?.();
  teardown = null;
  const [section, id, extra] = location.hash.replace(/^#\/?/, "").split("/");
  const fallback = isAdmin() ? "endpoints" : "builds";
  const name = section || fallback;
  if (!isAdmin() && ["endpoints", "deliveries", "secrets", "approvals"].includes(name)) {
    main.replaceChildren(
      h("section.card.notice", {},
        h("h1", {}, "An ADMIN token is needed here"),
        h("p", {}, `This token has ${viewer.viewerPermission} permission. Webhook endpoints, secrets, `
          + "approval hooks and the delivery log are for organization admins; builds are below."),
        h("a.button", { href: "#/builds" }, "Show builds")),
    );
    return;
  }
  for (const link of document.querySelectorAll("#nav [data-tab]")) {
    if (link.dataset.tab === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const context = { viewer, isAdmin: isAdmin(), main };
  const views = {
    endpoints: () => (id ? editorView(context, id === "new" ? null : id) : endpointsView(context)),
    deliveries: () => deliveriesView(context, { endpointId: id === "endpoint" ? extra : null, openId: id === "endpoint" ? null : id }),
    secrets: () => secretsView(context),
    approvals: () => approvalsView(context),
    builds: () => buildsView(context),
  };
  const view = views[name];
  if (!view) {
    main.replaceChildren(errorBox(new Error(`There is no page called “${name}”.`)));
    return;
  }
  Promise.resolve(view())
    .then((stop) => { teardown = stop ?? null; })
    .catch((error) => main.replaceChildren(errorBox(error)));
}

onUnauthenticated((error) => {
  setToken(null);
  showSignIn(`${MESSAGES.UNAUTHENTICATED}: ${error.message}`);
});

document.getElementById("sign-out").addEventListener("click", () => {
  setToken(null);
  location.hash = "";
  showSignIn();
});
window.addEventListener("hashchange", route);
start();
