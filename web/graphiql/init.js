// Starts GraphiQL against this server's /graphql. Kept out of the page so that the page's
// Content-Security-Policy allows no inline script.
"use strict";

(function () {
  // The console keeps its token in this tab's sessionStorage; GraphiQL starts with it when
  // there is one, and otherwise with a placeholder to replace.
  var token = null;
  try {
    token = window.sessionStorage.getItem("herald.token");
  } catch (_) {
    token = null;
  }
  var headers = JSON.stringify(
    { Authorization: "Bearer " + (token || "<paste a token here>") },
    null,
    2
  );
  var fetcher = GraphiQL.createFetcher({ url: window.location.origin + "/graphql" });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      headers: headers,
      // The headers hold a token: they are not written to localStorage.
      shouldPersistHeaders: false,
      defaultEditorToolsVisibility: "headers",
    })
  );
})();
