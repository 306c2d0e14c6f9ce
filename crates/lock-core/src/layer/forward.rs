//! [`forward_to_inner!`](crate::forward_to_inner): the methods a layer leaves unchanged,
//! handed to the provider it wraps.
//!
//! A layer (a [`LockProvider`](crate::LockProvider) around another one) changes a few
//! operations and passes the rest through. The macro writes the pass-through methods: each
//! returns the inner provider's future as it is, so a forwarded call costs no allocation of
//! its own.

/// Implements the named [`LockProvider`](crate::LockProvider) methods by calling the same
/// method on the provider in field `$inner`, unchanged.
///
/// For use inside an `#[async_trait] impl LockProvider for Layer` block, listing the methods
/// the layer does not change (any of `name`, `capabilities`, `request_timeout`, `lock`,
/// `try_lock`, `unlock`, `refresh_lock`, `is_locked`, `list`, `publish_wait`,
/// `withdraw_wait`, `waits`, `health`, `close`):
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use lock_core::{forward_to_inner, Lease, LockOptions, LockProvider, Result};
///
/// /// Counts acquisitions, changes nothing else.
/// #[derive(Debug)]
/// struct Counting {
///     inner: Arc<dyn LockProvider>,
///     calls: std::sync::atomic::AtomicU64,
/// }
///
/// #[async_trait]
/// impl LockProvider for Counting {
///     async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
///         self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.lock(opts).await
///     }
///
///     forward_to_inner!(inner; name, capabilities, request_timeout, try_lock, unlock, refresh_lock,
///         is_locked, list, publish_wait, withdraw_wait, waits, health, close);
/// }
/// ```
#[macro_export]
macro_rules! forward_to_inner {
    ($inner:ident; $($method:ident),+ $(,)?) => {
        $( $crate::forward_to_inner!(@method $inner $method); )+
    };
    (@method $inner:ident name) => {
        fn name(&self) -> &'static str {
            self.$inner.name()
        }
    };
    (@method $inner:ident capabilities) => {
        fn capabilities(&self) -> $crate::Capabilities {
            self.$inner.capabilities()
        }
    };
    (@method $inner:ident request_timeout) => {
        fn request_timeout(&self) -> ::core::option::Option<::std::time::Duration> {
            self.$inner.request_timeout()
        }
    };
    (@method $inner:ident lock) => {
        fn lock<'life0, 'life1, 'async_trait>(
            &'life0 self, opts: &'life1 $crate::LockOptions,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<$crate::Lease>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait,
        {
            self.$inner.lock(opts)
        }
    };
    (@method $inner:ident try_lock) => {
        fn try_lock<'life0, 'life1, 'async_trait>(
            &'life0 self, opts: &'life1 $crate::LockOptions,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<$crate::Lease>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait,
        {
            self.$inner.try_lock(opts)
        }
    };
    (@method $inner:ident unlock) => {
        fn unlock<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self, key: &'life1 str, owner: &'life2 str,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<()>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait, 'life2: 'async_trait,
        {
            self.$inner.unlock(key, owner)
        }
    };
    (@method $inner:ident refresh_lock) => {
        fn refresh_lock<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self, key: &'life1 str, owner: &'life2 str, ttl: ::std::time::Duration,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<$crate::Lease>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait, 'life2: 'async_trait,
        {
            self.$inner.refresh_lock(key, owner, ttl)
        }
    };
    (@method $inner:ident is_locked) => {
        fn is_locked<'life0, 'life1, 'async_trait>(
            &'life0 self, key: &'life1 str,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<::core::option::Option<$crate::LockInfo>>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait,
        {
            self.$inner.is_locked(key)
        }
    };
    (@method $inner:ident list) => {
        fn list<'life0, 'life1, 'async_trait>(
            &'life0 self, prefix: &'life1 str,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<::std::vec::Vec<$crate::LockInfo>>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait,
        {
            self.$inner.list(prefix)
        }
    };
    (@method $inner:ident publish_wait) => {
        fn publish_wait<'life0, 'life1, 'async_trait>(
            &'life0 self, wait: &'life1 $crate::deadlock::WaitInfo,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<()>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait,
        {
            self.$inner.publish_wait(wait)
        }
    };
    (@method $inner:ident withdraw_wait) => {
        fn withdraw_wait<'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self, key: &'life1 str, owner: &'life2 str, id: u64,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<()>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait, 'life2: 'async_trait,
        {
            self.$inner.withdraw_wait(key, owner, id)
        }
    };
    (@method $inner:ident waits) => {
        fn waits<'life0, 'life1, 'async_trait>(
            &'life0 self, prefix: &'life1 str,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<::std::vec::Vec<$crate::deadlock::WaitInfo>>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait, 'life1: 'async_trait,
        {
            self.$inner.waits(prefix)
        }
    };
    (@method $inner:ident health) => {
        fn health<'life0, 'async_trait>(
            &'life0 self,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<$crate::Health>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
        {
            self.$inner.health()
        }
    };
    (@method $inner:ident close) => {
        fn close<'life0, 'async_trait>(
            &'life0 self,
        ) -> ::core::pin::Pin<
            ::std::boxed::Box<
                dyn ::core::future::Future<Output = $crate::Result<()>> + ::core::marker::Send + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
        {
            self.$inner.close()
        }
    };
}
