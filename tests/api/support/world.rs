//! An organization with a repository and tokens at every level, and the records a test makes
//! in it.

use herald::domain::Permission;
use serde_json::{Value, json};

use super::TestApp;

/// An organization with a repository, and tokens at every level.
pub struct World {
    pub org: String,
    pub admin: String,
    pub write: String,
    pub read: String,
    pub repository: String,
}

impl World {
    pub async fn new(app: &TestApp, name: &str) -> Self {
        let org = app.org(name).await;
        let admin = app.token(&org, Permission::Admin);
        let data = app
            .ok(
                &admin,
                "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }",
                json!({ "org": org }),
            )
            .await;
        Self {
            write: app.token(&org, Permission::Write),
            read: app.token(&org, Permission::Read),
            repository: data["createRepository"]["repository"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
            org,
            admin,
        }
    }

    /// Adds an endpoint; `extra` holds more input fields.
    pub async fn endpoint(&self, app: &TestApp, url: &str, extra: Value) -> String {
        let mut input = json!({ "ownerUid": self.org, "webhookURL": url });
        input
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let data = app
            .ok(
                &self.admin,
                "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }",
                json!({ "input": input }),
            )
            .await;
        data["createWebHookEndpoint"]["endpoint"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn build(&self, app: &TestApp) -> String {
        let data = app
            .ok(
                &self.write,
                "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"abc123\", changeMessageTitle: \"Fix it\"}) { build { id } } }",
                json!({ "repo": self.repository }),
            )
            .await;
        data["createBuild"]["build"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn task(&self, app: &TestApp, build: &str, name: &str) -> String {
        let data = app
            .ok(
                &self.write,
                "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name, labels: [\"linux\"]}) { task { id } } }",
                json!({ "build": build, "name": name }),
            )
            .await;
        data["createTask"]["task"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn task_status(&self, app: &TestApp, task: &str, status: &str) {
        app.ok(
            &self.write,
            "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id } } }",
            json!({ "task": task, "status": status }),
        )
        .await;
    }

    pub async fn build_status(&self, app: &TestApp, build: &str, status: &str) {
        app.ok(
            &self.write,
            "mutation($build: ID!, $status: BuildStatus!) { updateBuildStatus(input: {buildId: $build, status: $status}) { build { id } } }",
            json!({ "build": build, "status": status }),
        )
        .await;
    }
}
