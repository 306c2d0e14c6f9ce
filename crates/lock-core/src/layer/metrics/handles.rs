//! The metric handles of each class, registered once per recorder.
//!
//! Registering a metric through the facade builds its label set and looks it up in the
//! recorder on every call; the handles it returns are what recording actually needs. The
//! layer keeps them per class, and registers them again when the recorder in use changes:
//! the facade cannot say whether a recorder is installed, so handles made before the
//! application installed one would otherwise stay no-ops forever. The recorder in use is
//! told apart by its address (the facade's no-op recorder, the global one, or a thread's
//! local one).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Recorder};

use super::{
    ACQUIRE_TOTAL, ACQUIRE_WAIT_SECONDS, HELD_LOCKS, HOLD_SECONDS, OLDEST_HOLD_START_SECONDS, REFRESH_TOTAL,
};

/// The handles of the frequent operations of one class (rare outcomes register on use).
pub(super) struct ClassHandles {
    pub(super) acquired: Counter,
    pub(super) timeout: Counter,
    pub(super) wait: Histogram,
    pub(super) hold: Histogram,
    pub(super) held: Gauge,
    pub(super) oldest: Gauge,
    pub(super) refreshed: Counter,
}

impl ClassHandles {
    fn register(provider: &'static str, class: &Arc<str>) -> Self {
        ClassHandles {
            acquired: counter!(ACQUIRE_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => "acquired"),
            timeout: counter!(ACQUIRE_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => "timeout"),
            wait: histogram!(ACQUIRE_WAIT_SECONDS, "provider" => provider, "class" => class.clone()),
            hold: histogram!(HOLD_SECONDS, "provider" => provider, "class" => class.clone()),
            held: gauge!(HELD_LOCKS, "provider" => provider, "class" => class.clone()),
            oldest: gauge!(OLDEST_HOLD_START_SECONDS, "provider" => provider, "class" => class.clone()),
            refreshed: counter!(REFRESH_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => "refreshed"),
        }
    }
}

/// The address of the recorder the facade would record to now.
fn recorder_in_use() -> usize {
    metrics::with_recorder(|r| r as *const dyn Recorder as *const () as usize)
}

/// The address of the recorder the handles were registered with, and the handles by class.
type Registered = (usize, HashMap<Arc<str>, Arc<ClassHandles>>);

/// Handles per class, for the recorder they were registered with.
#[derive(Default)]
pub(super) struct HandleCache {
    by_class: RwLock<Registered>,
}

impl std::fmt::Debug for HandleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes = self.by_class.read().unwrap_or_else(PoisonError::into_inner).1.len();
        f.debug_struct("HandleCache").field("classes", &classes).finish()
    }
}

impl HandleCache {
    /// The handles of `class`, registered with the recorder in use.
    pub(super) fn get(&self, provider: &'static str, class: &Arc<str>) -> Arc<ClassHandles> {
        let recorder = recorder_in_use();
        {
            let cache = self.by_class.read().unwrap_or_else(PoisonError::into_inner);
            if cache.0 == recorder {
                if let Some(h) = cache.1.get(class) {
                    return h.clone();
                }
            }
        }
        let mut cache = self.by_class.write().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != recorder {
            *cache = (recorder, HashMap::new());
        }
        cache
            .1
            .entry(class.clone())
            .or_insert_with(|| Arc::new(ClassHandles::register(provider, class)))
            .clone()
    }
}
