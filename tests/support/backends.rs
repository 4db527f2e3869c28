//! "Run this test body under both backends" in one macro, [`backend_tests!`], for every
//! test binary: a body is a plain `async fn` taking what the test needs ([`Backend`],
//! [`Setup`], or anything else that implements [`Fixture`], e.g. a migrated store), and
//! the macro makes one `#[tokio::test]` per store backend, optionally per front door,
//! on the runtime flavour asked for.

use std::future::Future;

/// The store behind keygate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Which front door a test's requests come through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// `http.fast_path = true` (the default): the hot inference routes on keygate's own
    /// HTTP/1.1 path, everything else through hyper and the router.
    Fast,
    /// `http.fast_path = false`: every request through hyper and the router.
    Router,
}

/// What a test runs against: a store backend behind a front door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    pub backend: Backend,
    pub door: FrontDoor,
}

impl From<Backend> for Setup {
    /// The default front door (`http.fast_path = true`).
    fn from(backend: Backend) -> Setup {
        Setup {
            backend,
            door: FrontDoor::Fast,
        }
    }
}

/// What a test body can ask for: built from the [`Setup`] before the body runs, with a
/// guard that lives until the body has finished (a database to drop, a server to stop).
pub trait Fixture: Sized {
    type Guard;
    fn prepare(setup: Setup) -> impl Future<Output = (Self, Self::Guard)>;
}

impl Fixture for Backend {
    type Guard = ();
    async fn prepare(setup: Setup) -> (Backend, ()) {
        (setup.backend, ())
    }
}

impl Fixture for Setup {
    type Guard = ();
    async fn prepare(setup: Setup) -> (Setup, ()) {
        (setup, ())
    }
}

/// Runs `body` with the fixture it asks for (the tests [`backend_tests!`] makes call this).
pub async fn run_with_fixture<A, F, Fut>(setup: Setup, body: F)
where
    A: Fixture,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = ()>,
{
    let (fixture, guard) = A::prepare(setup).await;
    body(fixture).await;
    drop(guard);
}

/// Makes tests from `async fn name(X)` bodies, `X` any [`Fixture`]:
///
/// ```ignore
/// backend_tests! {
///     doors: both,              // optional: also once per front door, under
///                               //   `fast_path::` and `router::` (default: none, the
///                               //   default door)
///     flavor: multi_thread,     // optional: `current_thread` (default), `multi_thread`
///                               //   (2 workers), or `by_backend` (SQLite on
///                               //   current_thread, PostgreSQL on multi_thread)
///     both: [a, b, m::c],       // on SQLite and PostgreSQL: `sqlite::a`, `postgres::a`, …
///     sqlite: [d],              // optional: on SQLite only: `sqlite::d`
/// }
/// ```
///
/// A body is named by its path from the invoking module (`m::c` makes `sqlite::c`). The
/// support module must be mounted as `crate::support` (every test binary does).
macro_rules! backend_tests {
    (
        $(doors: $doors:ident,)?
        $(flavor: $flavor:ident,)?
        $(both: [$($($both:ident)::+),* $(,)?] $(,)?)?
        $(sqlite: [$($($lite:ident)::+),* $(,)?] $(,)?)?
    ) => {
        $crate::support::backends::backend_tests!(@doors [$($doors)?] [$($flavor)?]
            [$($([$($both)::+])*)?] [$($([$($lite)::+])*)?]);
    };
    (@doors [] $flavor:tt $both:tt $lite:tt) => {
        $crate::support::backends::backend_tests!(@backends [super::] Fast $flavor $both $lite);
    };
    (@doors [both] $flavor:tt $both:tt $lite:tt) => {
        mod fast_path {
            $crate::support::backends::backend_tests!(
                @backends [super::super::] Fast $flavor $both $lite);
        }
        mod router {
            $crate::support::backends::backend_tests!(
                @backends [super::super::] Router $flavor $both $lite);
        }
    };
    (@backends $up:tt $door:ident $flavor:tt [$($both:tt)*] [$($lite:tt)*]) => {
        mod sqlite {
            $($crate::support::backends::backend_tests!(@flavor $up Sqlite $door $flavor $both);)*
            $($crate::support::backends::backend_tests!(@flavor $up Sqlite $door $flavor $lite);)*
        }
        mod postgres {
            $($crate::support::backends::backend_tests!(@flavor $up Postgres $door $flavor $both);)*
        }
    };
    // The runtime flavour, from the option and the backend.
    (@flavor $up:tt $backend:ident $door:ident [] $body:tt) => {
        $crate::support::backends::backend_tests!(@test $up $backend $door
            (flavor = "current_thread") $body $body);
    };
    (@flavor $up:tt $backend:ident $door:ident [current_thread] $body:tt) => {
        $crate::support::backends::backend_tests!(@test $up $backend $door
            (flavor = "current_thread") $body $body);
    };
    (@flavor $up:tt $backend:ident $door:ident [multi_thread] $body:tt) => {
        $crate::support::backends::backend_tests!(@test $up $backend $door
            (flavor = "multi_thread", worker_threads = 2) $body $body);
    };
    (@flavor $up:tt Sqlite $door:ident [by_backend] $body:tt) => {
        $crate::support::backends::backend_tests!(@test $up Sqlite $door
            (flavor = "current_thread") $body $body);
    };
    (@flavor $up:tt Postgres $door:ident [by_backend] $body:tt) => {
        $crate::support::backends::backend_tests!(@test $up Postgres $door
            (flavor = "multi_thread", worker_threads = 2) $body $body);
    };
    // The test is named after the last segment of the body's path.
    (@test [$($up:tt)*] $backend:ident $door:ident $args:tt [$($body:ident)::+] [$name:ident]) => {
        #[tokio::test $args]
        async fn $name() {
            $crate::support::backends::run_with_fixture(
                $crate::support::backends::Setup {
                    backend: $crate::support::backends::Backend::$backend,
                    door: $crate::support::backends::FrontDoor::$door,
                },
                $($up)* $($body)::+,
            )
            .await
        }
    };
    (@test $up:tt $backend:ident $door:ident $args:tt $body:tt [$first:ident :: $($rest:ident)::+]) => {
        $crate::support::backends::backend_tests!(@test $up $backend $door $args $body [$($rest)::+]);
    };
}
pub(crate) use backend_tests;
