// GraphQL over fetch, with the token kept in sessionStorage (gone when the tab closes).

const TOKEN_KEY = "herald.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A GraphQL error: the first error's message and its extensions.code. */
export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

const listeners = new Set();

/** Calls `fn(error)` whenever a request fails because the token is wrong or expired. */
export function onUnauthenticated(fn) {
  listeners.add(fn);
}

/** Runs a query or mutation and returns its data, or throws an ApiError. */
export async function gql(query, variables = {}) {
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${token() ?? ""}`,
      },
      body: JSON.stringify({ query, variables }),
    });
  } catch {
    throw new ApiError("Herald cannot be reached; check that the server is running.", "NETWORK");
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`Herald answered ${response.status} without a GraphQL response.`, "INTERNAL");
  }
  if (body.errors?.length) {
    const first = body.errors[0];
    const error = new ApiError(first.message, first.extensions?.code ?? "INTERNAL");
    if (error.code === "UNAUTHENTICATED") listeners.forEach((fn) => fn(error));
    throw error;
  }
  return body.data;
}

export const ENDPOINT_FIELDS = `
  id webhookURL maskedSecretToken secretName secretOverlapEndsTimestamp signatureStyle
  events publishedEvents conditions payloadQuery payloadFormat enabled insecureSsl
  headers { name maskedValue }
  lastDelivery { id state timestamp attempts response { status } }`;

/** The organization's named secrets (values masked), and the endpoints signing with each. */
export const SECRET_FIELDS = "name maskedValue updatedTimestamp overlapEndsTimestamp usedBy";

export const DELIVERY_FIELDS = `
  id endpointId event action state attempts timestamp nextAttemptTimestamp
  payload { event action data }
  response { status duration data }
  attemptLog { number timestamp status duration error responseHeaders responseData }`;

/** The default payload selection (the one used when an endpoint has none): what Cirrus CI sends. */
export const DEFAULT_SELECTION = `query WebhookPayload($repositoryId: ID!, $buildId: ID!, $taskId: ID) {
  repository(id: $repositoryId) { id owner name isPrivate }
  build(id: $buildId) {
    id branch pullRequest pullRequestDraft durationInSeconds
    changeIdInRepo changeMessageTitle changeTimestamp status
    user { id username }
  }
  task(id: $taskId) {
    id name nameAlias localGroupId status statusTimestamp creationTimestamp durationInSeconds
    uniqueLabels automaticReRun automaticallyReRunnable manualRerunCount instanceType
    notifications { level message link }
  }
}
`;

/** The default selection of Cirrus CI's documentation, field for field (CIRRUS_DOCUMENTED). */
export const CIRRUS_DOCUMENTED_SELECTION = `query WebhookPayload($repositoryId: ID!, $buildId: ID!, $taskId: ID) {
  repository(id: $repositoryId) { id owner name isPrivate }
  build(id: $buildId) {
    id branch pullRequest pullRequestDraft durationInSeconds
    changeIdInRepo changeTimestamp status
  }
  task(id: $taskId) {
    id name nameAlias status statusTimestamp creationTimestamp durationInSeconds
    uniqueLabels automaticReRun automaticallyReRunnable manualRerunCount
    notifications { level message link }
  }
}
`;
