//! sea-orm entities, one module per table. These are storage types, not API types: the
//! GraphQL layer wraps them, and conversions name every field.

macro_rules! no_relations {
    () => {
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    };
}

pub mod setting {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub value: String,
    }
    no_relations!();
}

pub mod organization {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "organizations")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub created_at: i64,
        /// API tokens issued before this time (ms since the epoch, a whole second) are refused.
        pub tokens_revoked_before: Option<i64>,
    }
    no_relations!();
}

pub mod repository {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "repositories")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        pub name: String,
        pub is_private: bool,
        pub default_branch: String,
        pub created_at: i64,
    }
    no_relations!();
}

pub mod build {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "builds")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        pub repository_id: i64,
        pub branch: String,
        pub tag: Option<String>,
        pub change_id_in_repo: String,
        pub change_message_title: String,
        pub change_message: String,
        pub pull_request: Option<i64>,
        pub pull_request_draft: Option<bool>,
        pub change_timestamp: i64,
        pub created_at: i64,
        pub status: crate::domain::BuildStatus,
        pub status_timestamp: i64,
        pub executing_timestamp: Option<i64>,
        pub final_status_timestamp: Option<i64>,
        /// Who initiated the build (a user of its organization), when known.
        pub initializer_id: Option<i64>,
        pub initializer: Option<String>,
        /// The work id an approval hook's answer gave (`X-Herald-Work-Id`).
        pub work_id: Option<String>,
        /// How its last final status compared with the branch's previous build (see
        /// [`crate::domain::transition`]).
        pub transition: Option<crate::domain::WebHookCondition>,
        /// The build of its branch it was compared with when it last finished.
        pub previous_build_id: Option<i64>,
    }
    no_relations!();
}

pub mod user {
    use sea_orm::entity::prelude::*;

    /// A name an organization's tokens or CI engine act as, with the numeric id receivers read.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        pub username: String,
        pub created_at: i64,
    }
    no_relations!();
}

pub mod audit_event {
    use sea_orm::entity::prelude::*;

    /// One mutation an organization performed, recorded in the mutation's own transaction.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The public id, a UUID.
        pub uid: String,
        pub org_id: i64,
        #[sea_orm(column_name = "type")]
        pub kind: String,
        pub timestamp: i64,
        /// The mutation's name and input, secrets removed, as JSON text.
        pub data: String,
        pub actor_id: i64,
        pub actor_username: String,
        pub actor_ip: Option<String>,
        pub repository_id: Option<i64>,
    }
    no_relations!();
}

pub mod task {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        pub repository_id: i64,
        pub build_id: i64,
        pub name: String,
        pub name_alias: Option<String>,
        pub local_group_id: i64,
        pub status: crate::domain::TaskStatus,
        pub status_timestamp: i64,
        pub creation_timestamp: i64,
        pub executing_timestamp: Option<i64>,
        pub final_status_timestamp: Option<i64>,
        /// A JSON array of strings.
        pub labels: String,
        pub automatic_re_run: bool,
        pub automatically_re_runnable: bool,
        pub manual_rerun_count: i64,
        pub instance_type: String,
        /// A JSON array of `{level, message, link}`.
        pub notifications: String,
        /// The work id an approval hook's answer gave (`X-Herald-Work-Id`).
        pub work_id: Option<String>,
        /// How its last final status compared with the previous task of its name on its
        /// build's branch.
        pub transition: Option<crate::domain::WebHookCondition>,
        pub previous_task_id: Option<i64>,
    }
    no_relations!();
}

pub mod webhook_endpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_endpoints")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        /// The URL without credentials (rows written before credentials had a column of their
        /// own may still hold them here).
        pub url: String,
        /// The signing secret, sealed when a key is configured; write-only in the API.
        pub secret: Option<String>,
        /// A JSON array of event kinds; empty means every kind.
        pub events: String,
        pub payload_query: Option<String>,
        pub payload_format: crate::domain::PayloadFormat,
        pub enabled: bool,
        pub insecure_ssl: bool,
        pub created_at: i64,
        pub updated_at: i64,
        /// The URL's `user:password`, sealed when a key is configured; sent as Basic auth.
        pub credentials: Option<String>,
        /// A JSON array of build and task status names; empty means every status.
        pub status_filter: String,
        pub signature_style: crate::domain::SignatureStyle,
        /// A JSON array of published event types; empty means every type.
        pub published_events: String,
        /// The custom headers as a JSON array of `{name, value}`, sealed as one value.
        pub headers: Option<String>,
        /// The organization's named secret that signs, instead of `secret`.
        pub secret_name: Option<String>,
        /// The secret a rotation replaced, sealed, and when it stops signing (ms since epoch).
        pub previous_secret: Option<String>,
        pub previous_secret_until: Option<i64>,
        /// A JSON array of transitions; empty means every change.
        pub conditions: String,
    }
    no_relations!();

    impl std::fmt::Debug for Model {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("WebhookEndpoint")
                .field("id", &self.id)
                .field("org_id", &self.org_id)
                .field("enabled", &self.enabled)
                .finish_non_exhaustive()
        }
    }
}

pub mod approval_hook {
    use sea_orm::entity::prelude::*;

    /// A service of an organization asked before a build or task is recorded.
    #[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "approval_hooks")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        /// The URL without credentials.
        pub url: String,
        /// The URL's `user:password`, sealed when a key is configured.
        pub credentials: Option<String>,
        /// The signing secret, sealed when a key is configured.
        pub secret: Option<String>,
        pub secret_name: Option<String>,
        pub signature_style: crate::domain::SignatureStyle,
        /// A JSON array of approval points.
        pub points: String,
        pub timeout_ms: i64,
        pub when_unavailable: crate::domain::WhenUnavailable,
        pub enabled: bool,
        pub created_at: i64,
        pub updated_at: i64,
    }
    no_relations!();

    impl std::fmt::Debug for Model {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ApprovalHook")
                .field("id", &self.id)
                .field("org_id", &self.org_id)
                .finish_non_exhaustive()
        }
    }
}

pub mod approval_call {
    use sea_orm::entity::prelude::*;

    /// One call of an approval hook: what was asked, what came back, what it decided.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "approval_calls")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The call's public id: its `X-Cirrus-Delivery`.
        pub uid: String,
        pub org_id: i64,
        pub hook_id: i64,
        pub point: crate::domain::ApprovalPoint,
        pub timestamp: i64,
        /// The body sent.
        pub request: String,
        pub status: Option<i32>,
        /// The answer's body (at most 64 KiB).
        pub response: String,
        pub duration_ms: i64,
        pub decision: crate::domain::ApprovalDecision,
        pub reason: Option<String>,
        /// Why no valid answer came, in one sentence.
        pub error: Option<String>,
        pub work_id: Option<String>,
        /// The SHA-256 (hex) of the one-time token the request carried to decide a held build.
        pub decide_token: Option<String>,
        /// The build the call held, once recorded.
        pub build_id: Option<i64>,
        /// When the token was used.
        pub decided_at: Option<i64>,
    }
    no_relations!();
}

pub mod webhook_secret {
    use sea_orm::entity::prelude::*;

    /// A secret defined once by name and used by any of the organization's endpoints.
    #[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_secrets")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        pub name: String,
        /// Sealed when a key is configured; write-only in the API.
        pub value: String,
        /// The value a rotation replaced, sealed, and when it stops signing.
        pub previous_value: Option<String>,
        pub previous_until: Option<i64>,
        pub updated_at: i64,
    }
    no_relations!();

    impl std::fmt::Debug for Model {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("WebhookSecret")
                .field("id", &self.id)
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }
}

pub mod published_event {
    use sea_orm::entity::prelude::*;

    /// An event a platform published, with its payload as JSON text.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "published_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub uid: String,
        pub org_id: i64,
        #[sea_orm(column_name = "type")]
        pub kind: String,
        pub subject: Option<String>,
        pub payload: String,
        pub timestamp: i64,
    }
    no_relations!();
}

pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub org_id: i64,
        pub kind: String,
        pub action: String,
        pub old_status: Option<String>,
        pub repository_id: i64,
        pub build_id: i64,
        pub task_id: Option<i64>,
        pub timestamp: i64,
    }
    no_relations!();
}

pub mod delivery {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "deliveries")]
    pub struct Model {
        /// Orders deliveries: a chain (endpoint, build) is sent in id order.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The public delivery id: `X-Cirrus-Delivery` and `webhook-id`.
        pub uid: String,
        pub org_id: i64,
        pub endpoint_id: i64,
        pub event_id: Option<i64>,
        pub build_id: Option<i64>,
        /// `build`, `task`, `audit_event` or `ping`.
        pub event: String,
        pub action: crate::domain::EventAction,
        /// The exact bytes every attempt sends.
        pub body: String,
        pub state: crate::domain::DeliveryState,
        pub attempts: i32,
        /// Attempts since the delivery was created or last redelivered; drives the schedule.
        pub round_attempts: i32,
        pub next_attempt_at: i64,
        /// The event's time: `X-Cirrus-Timestamp`.
        pub created_at: i64,
        pub last_status: Option<i32>,
        pub last_duration: Option<i64>,
        pub last_response: Option<String>,
        pub updated_at: i64,
        /// The work id of the build or task the event is about (`X-Herald-Work-Id`).
        pub work_id: Option<String>,
        /// Its place among its endpoint's deliveries (`X-Herald-Sequence`): gap-free, in the
        /// order their transactions committed; none for a delivery never sent.
        pub sequence: Option<i64>,
    }
    no_relations!();
}

pub mod delivery_queue {
    use sea_orm::entity::prelude::*;

    /// A delivery not yet finished (`PENDING` or `RETRYING`): what the queue's claims, leases
    /// and releases write, apart from the delivery's own row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_queue")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub delivery_id: i64,
        pub endpoint_id: i64,
        pub build_id: Option<i64>,
        /// When the next attempt is due.
        pub next_attempt_at: i64,
        /// Waits behind an earlier unfinished delivery of its chain; the claim skips it until
        /// that one finishes.
        pub held: bool,
        pub lease_until: Option<i64>,
        /// The fencing token of the current claim; only its holder may record an outcome.
        pub lease_token: Option<String>,
    }
    no_relations!();
}

pub mod delivery_attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_attempts")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub delivery_id: i64,
        pub number: i32,
        pub timestamp: i64,
        pub status: Option<i32>,
        pub duration: i64,
        pub error: Option<String>,
        /// A JSON object of the response's headers.
        pub response_headers: String,
        pub response_body: String,
    }
    no_relations!();
}
