//! Who owns a spawned task: the instance whose work spawned it, however deep (a Mux connection's reader
//! and writer, the handler task of each of its sessions). Ownership travels as a task-local, so code
//! that spawns (the Mux layer) needs no handle passed down through every constructor: it calls
//! [`spawn`] instead of `tokio::spawn`.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The owner of an instance's background tasks: they end at its hard stop, and the instance waits for
/// them before its shutdown returns.
#[derive(Clone, Debug)]
pub struct Owner {
    tracker: TaskTracker,
    hard_stop: CancellationToken,
}

tokio::task_local! {
    static OWNER: Owner;
}

impl Owner {
    /// An owner whose tasks are cancelled when `hard_stop` is.
    pub fn new(hard_stop: CancellationToken) -> Owner {
        Owner { tracker: TaskTracker::new(), hard_stop }
    }

    /// Runs `fut` so that tasks it [`spawn`]s (and theirs, in turn) belong to this owner.
    pub fn scope<F: Future>(&self, fut: F) -> tokio::task::futures::TaskLocalFuture<Owner, F> {
        OWNER.scope(self.clone(), fut)
    }

    /// The token that ends every owned task.
    pub fn hard_stop(&self) -> &CancellationToken {
        &self.hard_stop
    }

    /// Owned tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every owned task has ended (cancel [`Owner::hard_stop`] first to make them end).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Spawns `fut` owned by the current task's owner, or plainly outside any (unit tests of a layer).
pub fn spawn<F: Future<Output = ()> + Send + 'static>(fut: F) -> JoinHandle<()> {
    match OWNER.try_with(Owner::clone) {
        Ok(owner) => {
            let stop = owner.hard_stop.clone();
            let tracker = owner.tracker.clone();
            tracker.spawn(OWNER.scope(owner, async move {
                tokio::select! {
                    _ = fut => {}
                    _ = stop.cancelled() => {}
                }
            }))
        }
        Err(_) => tokio::spawn(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn spawned_tasks_and_theirs_belong_to_the_owner_and_end_at_its_hard_stop() {
        let owner = Owner::new(CancellationToken::new());
        owner
            .scope(async {
                spawn(async {
                    // A grandchild: ownership travels on.
                    spawn(std::future::pending());
                    std::future::pending::<()>().await
                });
                tokio::task::yield_now().await;
            })
            .await;
        tokio::task::yield_now().await;
        assert_eq!(owner.running(), 2);
        owner.hard_stop().cancel();
        tokio::time::timeout(Duration::from_secs(1), owner.wait()).await.expect("owned tasks did not end");
        assert_eq!(owner.running(), 0);
        // Outside any owner, spawn is tokio::spawn.
        spawn(async {}).await.unwrap();
    }
}
