//! The parsed documents of the requests clients send, cached by their text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_graphql::parser::types::ExecutableDocument;

/// The parsed documents of the requests clients send, by their text: a CI engine sends the
/// same few mutations over and over, and a cached document is cloned instead of parsed again.
/// Validation and limits still run on every request. Only requests with a valid token fill it,
/// and at most [`Documents::ENTRIES`] texts of at most [`Documents::TEXT`] bytes are kept; a
/// full cache starts over, so that many distinct queries cost memory only up to that bound.
#[derive(Clone, Default)]
pub struct Documents(Arc<Mutex<ByText>>);

/// Parsed documents by their query text.
type ByText = HashMap<String, ExecutableDocument>;

impl Documents {
    /// The most documents kept.
    pub const ENTRIES: usize = 64;
    /// The longest query text kept, in bytes: a CI engine's mutations are a few hundred.
    pub const TEXT: usize = 2048;

    /// Gives `request` its parsed document: the cached one for its text, or a fresh parse,
    /// which is kept when it succeeds.
    pub fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > Self::TEXT {
            return;
        }
        let cached = self.lock().get(&request.query).cloned();
        if let Some(doc) = cached {
            request.set_parsed_query(doc);
            return;
        }
        let Ok(doc) = request.parsed_query() else {
            return;
        };
        let doc = doc.clone();
        let mut documents = self.lock();
        if documents.len() >= Self::ENTRIES {
            documents.clear();
        }
        documents.insert(request.query.clone(), doc);
    }

    fn lock(&self) -> MutexGuard<'_, ByText> {
        // A panic while holding the lock leaves a map of complete documents: still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_what_parsed_up_to_their_bounds() {
        let documents = Documents::default();
        let prepare = |query: &str| {
            let mut request = async_graphql::Request::new(query);
            documents.prepare(&mut request);
            request.parsed_query().is_ok()
        };
        assert!(prepare("{ viewer { name } }"));
        assert!(prepare("{ viewer { name } }"));
        assert_eq!(documents.lock().len(), 1, "one text, one document");
        assert!(!prepare("{ viewer {"), "a syntax error is still one");
        let long = format!("{{ viewer {{ name }} }}{}", " ".repeat(Documents::TEXT));
        assert!(prepare(&long));
        assert_eq!(documents.lock().len(), 1, "neither was kept");
        for i in 0..Documents::ENTRIES + 10 {
            assert!(prepare(&format!("{{ f{i} }}")));
            assert!(documents.lock().len() <= Documents::ENTRIES);
        }
    }
}
