//! The metric handles of each class, registered once per recorder, found with one lookup.
//!
//! Registering a metric through the facade builds its label set and looks it up in the
//! recorder on every call; the handles it returns are what recording actually needs. The
//! layer keeps them per class, found by the key's class as the classifier's rule gives it
//! (so a key's class and its handles cost one lookup), and registers them again when the
//! recorder in use changes: the facade cannot say whether a recorder is installed, so handles
//! made before the application installed one would otherwise stay no-ops forever. The
//! recorder in use is told apart by its address (the facade's no-op recorder, the global one,
//! or a thread's local one).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Recorder};

use super::{
    Classifier, ACQUIRE_TOTAL, ACQUIRE_WAIT_SECONDS, HELD_LOCKS, HOLD_SECONDS, OLDEST_HOLD_START_SECONDS,
    REFRESH_TOTAL,
};

/// A class with the handles of its frequent operations (rare outcomes register on use).
pub(super) struct ClassHandles {
    /// The class label.
    pub(super) class: Arc<str>,
    /// The class's number in this layer, the same for every recorder.
    pub(super) index: usize,
    pub(super) acquired: Counter,
    pub(super) timeout: Counter,
    pub(super) wait: Histogram,
    pub(super) hold: Histogram,
    pub(super) held: Gauge,
    pub(super) oldest: Gauge,
    pub(super) refreshed: Counter,
}

impl std::fmt::Debug for ClassHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassHandles").field("class", &self.class).field("index", &self.index).finish()
    }
}

impl ClassHandles {
    fn register(provider: &'static str, class: Arc<str>, index: usize) -> Self {
        ClassHandles {
            acquired: counter!(ACQUIRE_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => "acquired"),
            timeout: counter!(ACQUIRE_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => "timeout"),
            wait: histogram!(ACQUIRE_WAIT_SECONDS, "provider" => provider, "class" => class.clone()),
            hold: histogram!(HOLD_SECONDS, "provider" => provider, "class" => class.clone()),
            held: gauge!(HELD_LOCKS, "provider" => provider, "class" => class.clone()),
            oldest: gauge!(OLDEST_HOLD_START_SECONDS, "provider" => provider, "class" => class.clone()),
            refreshed: counter!(REFRESH_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => "refreshed"),
            class,
            index,
        }
    }
}

/// The address of the recorder the facade would record to now.
fn recorder_in_use() -> usize {
    metrics::with_recorder(|r| r as *const dyn Recorder as *const () as usize)
}

#[derive(Default)]
struct Registered {
    /// The address of the recorder the handles were registered with.
    recorder: usize,
    /// Handles by class.
    by_class: HashMap<Arc<str>, Arc<ClassHandles>, foldhash::fast::RandomState>,
    /// Each class's number, kept across recorders.
    indices: HashMap<Arc<str>, usize>,
}

/// Handles per class, for the recorder they were registered with.
#[derive(Default)]
pub(super) struct HandleCache {
    registered: RwLock<Registered>,
}

impl std::fmt::Debug for HandleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes = self.registered.read().unwrap_or_else(PoisonError::into_inner).indices.len();
        f.debug_struct("HandleCache").field("classes", &classes).finish()
    }
}

impl HandleCache {
    /// The class of `key` with its handles, registered with the recorder in use.
    pub(super) fn of_key(
        &self,
        provider: &'static str,
        classifier: &Classifier,
        key: &str,
    ) -> Arc<ClassHandles> {
        let recorder = recorder_in_use();
        let rule = classifier.rule_class(key);
        if let Some(h) = self.lookup(recorder, &rule) {
            return h;
        }
        let class = classifier.capped(&rule);
        if *class != *rule {
            if let Some(h) = self.lookup(recorder, &class) {
                return h;
            }
        }
        self.register(recorder, provider, class)
    }

    fn lookup(&self, recorder: usize, class: &str) -> Option<Arc<ClassHandles>> {
        let registered = self.registered.read().unwrap_or_else(PoisonError::into_inner);
        (registered.recorder == recorder).then(|| registered.by_class.get(class).cloned()).flatten()
    }

    fn register(&self, recorder: usize, provider: &'static str, class: Arc<str>) -> Arc<ClassHandles> {
        let mut registered = self.registered.write().unwrap_or_else(PoisonError::into_inner);
        let registered = &mut *registered;
        if registered.recorder != recorder {
            registered.recorder = recorder;
            registered.by_class.clear();
        }
        if let Some(h) = registered.by_class.get(&class) {
            return h.clone();
        }
        let next = registered.indices.len();
        let index = *registered.indices.entry(class.clone()).or_insert(next);
        let handles = Arc::new(ClassHandles::register(provider, class.clone(), index));
        registered.by_class.insert(class, handles.clone());
        handles
    }
}
