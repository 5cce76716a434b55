//! What happened to the subject of an event: the `action` of its body.

/// The `action` of an event's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, sea_orm::EnumIter, sea_orm::DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum EventAction {
    /// A build or task was recorded, or an audit event was.
    #[sea_orm(string_value = "created")]
    Created,
    /// A build or task changed status.
    #[sea_orm(string_value = "updated")]
    Updated,
    /// A test delivery (`sendTestWebHook`).
    #[sea_orm(string_value = "ping")]
    Ping,
}

impl EventAction {
    /// The action as it is sent and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Ping => "ping",
        }
    }

    /// The action with this name, if there is one.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Created, Self::Updated, Self::Ping]
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

impl std::fmt::Display for EventAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_back_what_they_write() {
        for action in [
            EventAction::Created,
            EventAction::Updated,
            EventAction::Ping,
        ] {
            assert_eq!(EventAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(EventAction::parse("deleted"), None);
    }
}
