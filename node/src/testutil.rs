//! Helpers shared by the node crate's unit tests.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Calls `check` every `every` until it returns `Ok`, and returns that value; panics after
/// `timeout` with `what` and the last error `check` gave. The one deadline loop of the
/// unit tests (the cluster tests have `shoal_tests::poll_until`).
pub(crate) async fn poll_until<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {last}"
        );
        tokio::time::sleep(every).await;
    }
}

#[tokio::test]
async fn poll_until_returns_the_first_success_and_names_the_wait_on_timeout() {
    let mut n = 0;
    let v = poll_until(
        "the third call",
        Duration::from_secs(5),
        Duration::ZERO,
        || {
            n += 1;
            std::future::ready(if n == 3 { Ok(n) } else { Err("not yet") })
        },
    )
    .await;
    assert_eq!(v, 3);

    let timed_out = tokio::spawn(poll_until(
        "never",
        Duration::from_millis(30),
        Duration::from_millis(5),
        || std::future::ready(Err::<(), _>("still no")),
    ))
    .await
    .unwrap_err();
    let message = timed_out.into_panic();
    let message = message.downcast_ref::<String>().unwrap();
    assert!(message.contains("waiting for never: still no"), "{message}");
}
