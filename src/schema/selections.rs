//! The selections an endpoint can start from, offered by `webhookPayloadSelections` and run by
//! the payload renderer.

/// The selection used when an endpoint has none: what Cirrus CI sends today, which is Cirrus's
/// documented selection ([`CIRRUS_DOCUMENTED_SELECTION`]) plus the fields its receivers read
/// that the documentation leaves out (`changeMessageTitle`, `user`, `localGroupId`,
/// `instanceType`).
pub const DEFAULT_SELECTION: &str = "query WebhookPayload($repositoryId: ID!, $buildId: ID!, $taskId: ID) {
  repository(id: $repositoryId) { id owner name isPrivate }
  build(id: $buildId) { id branch pullRequest pullRequestDraft durationInSeconds changeIdInRepo changeMessageTitle changeTimestamp status user { id username } }
  task(id: $taskId) { id name nameAlias localGroupId status statusTimestamp creationTimestamp durationInSeconds uniqueLabels automaticReRun automaticallyReRunnable manualRerunCount instanceType notifications { level message link } }
}";

/// The selection Cirrus CI's documentation gives, field for field. An endpoint can store it to
/// send exactly those fields.
pub const CIRRUS_DOCUMENTED_SELECTION: &str = "query WebhookPayload($repositoryId: ID!, $buildId: ID!, $taskId: ID) {
  repository(id: $repositoryId) { id owner name isPrivate }
  build(id: $buildId) { id branch pullRequest pullRequestDraft durationInSeconds changeIdInRepo changeTimestamp status }
  task(id: $taskId) { id name nameAlias status statusTimestamp creationTimestamp durationInSeconds uniqueLabels automaticReRun automaticallyReRunnable manualRerunCount notifications { level message link } }
}";
