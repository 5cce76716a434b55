//! The ids of Herald's records, one type each, so that a build's id cannot be passed where a
//! task's is expected. The database keeps them as 64-bit integers; they are converted at the
//! storage edge (`From<i64>` in, [`OrgId::get`] and the like out).

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// The id as the database stores it.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                Self(id)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// An organization's id (its `uid` in the API).
    OrgId
);
id!(
    /// A repository's id.
    RepositoryId
);
id!(
    /// A build's id.
    BuildId
);
id!(
    /// A task's id.
    TaskId
);
id!(
    /// A webhook endpoint's id.
    EndpointId
);
id!(
    /// A delivery's row id (the API names deliveries by their uid).
    DeliveryId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_number_in_json_and_text() {
        let build = BuildId::from(42);
        assert_eq!(build.get(), 42);
        assert_eq!(build.to_string(), "42");
        assert_eq!(serde_json::to_string(&build).unwrap(), "42");
        assert_eq!(serde_json::from_str::<BuildId>("42").unwrap(), build);
        assert_eq!(i64::from(TaskId::from(7)), 7);
    }
}
