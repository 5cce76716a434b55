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
    /// An event a platform published (`publishEvent`).
    #[sea_orm(string_value = "published")]
    Published,
}

impl EventAction {
    /// The action as it is sent and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Ping => "ping",
            Self::Published => "published",
        }
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
    use sea_orm::ActiveEnum;

    #[test]
    fn actions_are_stored_as_they_are_sent() {
        for action in [
            EventAction::Created,
            EventAction::Updated,
            EventAction::Ping,
            EventAction::Published,
        ] {
            assert_eq!(action.to_value(), action.as_str());
            assert_eq!(EventAction::try_from_value(&action.to_value()), Ok(action));
        }
        assert!(EventAction::try_from_value(&"deleted".to_owned()).is_err());
    }
}
