// Recent builds and tasks of every repository: what any token, even READ, may see. Admins
// approve or reject the builds an approval hook held (NEEDS_APPROVAL).

import { gql } from "./api.js";
import { h, toast, when, stateBadge, errorBox } from "./ui.js";

const QUERY = `{ viewer { repositories(first: 20) { edges { node { id name defaultBranch
  builds(first: 5) { edges { node { id branch changeIdInRepo changeMessageTitle status buildCreatedTimestamp workId
    tasks { id name status } } } } } } } } }`;

/** Approve and Reject for a held build; `done` reloads the view. */
function decideControls(build, done) {
  const decide = async (button, mutation, variables, message) => {
    button.disabled = true;
    try {
      await gql(mutation, variables);
      toast(message);
      await done();
    } catch (error) {
      toast(error.message, "error");
      button.disabled = false;
    }
  };
  const approve = h("button.primary.small.approve-build", {
    type: "button",
    title: "Move the build to TRIGGERED",
    onclick: () => decide(approve,
      "mutation($id: ID!) { approveBuild(input: {buildId: $id}) { build { id status } } }",
      { id: build.id }, `Build #${build.id} was approved.`),
  }, "Approve");
  const reason = h("input.reject-reason", {
    type: "text", placeholder: "Reason (optional)", "aria-label": `Why build #${build.id} is rejected`,
  });
  const reject = h("button.danger.small.reject-build", { type: "submit" }, "Reject");
  const form = h("form.reject-form", {
    onsubmit: (event) => {
      event.preventDefault();
      decide(reject,
        "mutation($id: ID!, $reason: String) { rejectBuild(input: {buildId: $id, reason: $reason}) { build { id status } } }",
        { id: build.id, reason: reason.value.trim() || null }, `Build #${build.id} was rejected.`);
    },
  }, reason, reject);
  return h("div.build-decide", {}, h("span.muted", {}, "Waiting for approval:"), approve, form);
}

function buildItem(build, isAdmin, reload) {
  return h("li", { dataset: { id: build.id } },
    h("div.build-head", {}, stateBadge(build.status), h("b", {}, `#${build.id}`),
      h("span.mono", {}, build.branch), h("span.mono.muted", {}, build.changeIdInRepo.slice(0, 10)),
      h("span.title", {}, build.changeMessageTitle ?? ""),
      build.workId ? h("span.muted.work-id", { title: "The work id an approval hook gave" }, "work ", h("code", {}, build.workId)) : null,
      when(build.buildCreatedTimestamp)),
    isAdmin && build.status === "NEEDS_APPROVAL" ? decideControls(build, reload) : null,
    build.tasks.length ? h("ul.tasks", {}, build.tasks.map((task) =>
      h("li", {}, stateBadge(task.status), " ", task.name))) : null);
}

export async function buildsView({ isAdmin, viewer, main }) {
  const body = h("div#build-list");
  main.replaceChildren(h("section", {},
    h("div.page-head", {},
      h("div", {}, h("h1", {}, "Builds"),
        h("p.muted", {}, `The latest builds of ${viewer.name}'s repositories, as the CI engine recorded them.`))),
    isAdmin ? null : h("p.notice", {},
      `This token has ${viewer.viewerPermission} permission: webhook endpoints and deliveries need an ADMIN token.`),
    body));
  async function load() {
    try {
      const data = await gql(QUERY);
      const repositories = data.viewer.repositories.edges.map((edge) => edge.node);
      body.replaceChildren(...(repositories.length ? repositories.map((repo) => h("div.card.repo", {},
        h("h2", {}, repo.name, " ", h("span.muted", {}, repo.defaultBranch)),
        repo.builds.edges.length
          ? h("ul.builds", {}, repo.builds.edges.map(({ node }) => buildItem(node, isAdmin, load)))
          : h("p.muted", {}, "No builds yet.")))
        : [h("p.card.muted", {}, "No repositories yet.")]));
    } catch (error) {
      body.replaceChildren(errorBox(error));
    }
  }
  await load();
  return null;
}
