// Recent builds and tasks of every repository: what any token, even READ, may see.

import { gql } from "./api.js";
import { h, when, stateBadge } from "./ui.js";

export async function buildsView({ isAdmin, viewer, main }) {
  const data = await gql(`{ viewer { repositories(first: 20) { edges { node { id name defaultBranch
    builds(first: 5) { edges { node { id branch changeIdInRepo changeMessageTitle status buildCreatedTimestamp
      tasks { id name status } } } } } } } } }`);
  const repositories = data.viewer.repositories.edges.map((edge) => edge.node);
  main.replaceChildren(h("section", {},
    h("div.page-head", {},
      h("div", {}, h("h1", {}, "Builds"),
        h("p.muted", {}, `The latest builds of ${viewer.name}'s repositories, as the CI engine recorded them.`))),
    isAdmin ? null : h("p.notice", {},
      `This token has ${viewer.viewerPermission} permission: webhook endpoints and deliveries need an ADMIN token.`),
    repositories.length ? repositories.map((repo) => h("div.card.repo", {},
      h("h2", {}, repo.name, " ", h("span.muted", {}, repo.defaultBranch)),
      repo.builds.edges.length ? h("ul.builds", {}, repo.builds.edges.map(({ node: build }) => h("li", {},
        h("div.build-head", {}, stateBadge(build.status), h("b", {}, `#${build.id}`),
          h("span.mono", {}, build.branch), h("span.mono.muted", {}, build.changeIdInRepo.slice(0, 10)),
          h("span.title", {}, build.changeMessageTitle ?? ""), when(build.buildCreatedTimestamp)),
        build.tasks.length ? h("ul.tasks", {}, build.tasks.map((task) =>
          h("li", {}, stateBadge(task.status), " ", task.name))) : null)))
        : h("p.muted", {}, "No builds yet."))) : h("p.card.muted", {}, "No repositories yet.")));
  return null;
}
