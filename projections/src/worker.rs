//! Follows the event store and feeds the projector in batches; rebuilds views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use store::EventStore;
use tokio::sync::watch;

use crate::projector::{DecodedEvents, ProjectionError, Projector, Rebuild};

/// Most events applied in one atomic batch.
const BATCH: usize = 2048;

/// Makes the store durable up to `position` if it is not yet. Views never get ahead of the
/// durable log: a crash could lose the non-durable suffix of the embedded store and reuse
/// its positions for other events, and the views live in another database.
async fn durable_up_to(store: &dyn EventStore, position: store::GlobalPosition) -> Result<(), ProjectionError> {
    if store.durable_position().is_some_and(|durable| durable < position) {
        store.sync().await?;
    }
    Ok(())
}

/// A batch for the projector thread, and where to say how applying it went.
type Job = (
    Vec<store::RecordedEvent>,
    tokio::sync::oneshot::Sender<Result<(), ProjectionError>>,
);

/// A thread of its own, named `projector`, applies the batches `follow` hands it, one at a
/// time (so its CPU shows apart from the runtime's in `top -H` and in `crm bench import`).
/// It ends when the sender is dropped.
fn apply_thread(projector: Arc<Projector>) -> Result<std::sync::mpsc::Sender<Job>, ProjectionError> {
    let (batches, jobs) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("projector".into())
        .spawn(move || {
            for (batch, reply) in jobs {
                let _ = reply.send(projector.apply(&batch).map(|_| ()));
            }
        })
        .map_err(|e| {
            ProjectionError::Store(store::StoreError::Io(format!("cannot start the projector thread: {e}")))
        })?;
    Ok(batches)
}

/// Follows the store from the checkpoint until `shutdown`; the batch in hand is finished first.
pub async fn follow(
    store: Arc<dyn EventStore>,
    projector: Arc<Projector>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProjectionError> {
    let from = projector.views().checkpoint()?;
    tracing::info!(?from, store = store.kind(), "projector following the event store");
    let mut events = store.subscribe_all(from);
    let batches = apply_thread(projector.clone())?;
    loop {
        let first = tokio::select! {
            e = events.next() => e,
            _ = shutdown.changed() => break,
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(64);
        match first {
            Ok(e) => batch.push(e),
            Err(e) => {
                tracing::warn!(error = %e, "subscription error; it reconnects by itself");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        while batch.len() < BATCH {
            match events.next().now_or_never() {
                Some(Some(Ok(e))) => batch.push(e),
                _ => break,
            }
        }
        let started = Instant::now();
        if let Some(last) = batch.last() {
            durable_up_to(store.as_ref(), last.position).await?;
        }
        let n = batch.len();
        let (reply, applied) = tokio::sync::oneshot::channel();
        let stopped = || ProjectionError::Store(store::StoreError::Io("the projector thread stopped".into()));
        batches.send((batch, reply)).map_err(|_| stopped())?;
        applied.await.map_err(|_| stopped())??;
        metrics::counter!("projection_events_applied_total").increment(n as u64);
        metrics::histogram!("projection_batch_seconds").record(started.elapsed().as_secs_f64());
        if let Ok(Some(cp)) = projector.views().checkpoint() {
            metrics::gauge!("projection_checkpoint_position").set(cp.commit as f64);
        }
    }
    tracing::info!("projector stopped");
    Ok(())
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct ReplayReport {
    pub events: u64,
    pub elapsed: Duration,
}

impl ReplayReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Rebuilds every view from position zero into `projector` (a fresh view store), or brings
/// a view store up to the log's end. Not flushed: the caller decides (a throw-away store need not be).
pub async fn replay(
    store: &dyn EventStore,
    projector: &Projector,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, ProjectionError> {
    let started = Instant::now();
    let mut after = projector.views().checkpoint()?;
    let mut total = 0u64;
    loop {
        let events = store.read_all(after, 20_000).await?;
        let Some(last) = events.last() else { break };
        after = Some(last.position);
        total += events.len() as u64;
        durable_up_to(store, last.position).await?;
        tokio::task::block_in_place(|| projector.apply(&events))?;
        progress(total);
    }
    Ok(ReplayReport {
        events: total,
        elapsed: started.elapsed(),
    })
}

/// Rebuilds every view from position zero in memory (see [`Projector::rebuild`]). The next
/// chunk of the log is read while the current one is applied, so reading and projecting
/// run on two cores.
pub async fn rebuild<'p>(
    store: Arc<dyn EventStore>,
    projector: &'p Projector,
    mut progress: impl FnMut(u64),
) -> Result<(ReplayReport, Rebuild<'p>), ProjectionError> {
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    // The reader decodes what it reads, so the decoding runs beside the applying.
    let reader = tokio::spawn(async move {
        let mut after = None;
        loop {
            let events = match store.read_all(after, 20_000).await {
                Ok(events) => events,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let Some(last) = events.last() else { return };
            after = Some(last.position);
            let batch = tokio::task::block_in_place(|| DecodedEvents::of(events));
            if tx.send(Ok(batch)).await.is_err() {
                return;
            }
        }
    });
    let mut rebuild = projector.rebuild();
    let mut total = 0u64;
    while let Some(read) = rx.recv().await {
        let batch = read?;
        total += batch.len() as u64;
        tokio::task::block_in_place(|| rebuild.apply_decoded(batch))?;
        progress(total);
    }
    reader
        .await
        .map_err(|e| ProjectionError::Store(store::StoreError::Io(format!("the log reader failed: {e}"))))?;
    Ok((
        ReplayReport {
            events: total,
            elapsed: started.elapsed(),
        },
        rebuild,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use store::embedded::EmbeddedStore;
    use store::{EventStore, ExpectedRevision, NewEvent};

    use super::*;
    use crate::projector::ViewStore;

    #[tokio::test]
    async fn views_never_get_ahead_of_the_durable_log() {
        let store = Arc::new(EmbeddedStore::temporary().unwrap());
        let events = (0..5u128)
            .map(|i| NewEvent {
                event_id: uuid::Uuid::from_u128(i + 1),
                event_type: "NoteV1".into(),
                data: vec![1],
                metadata: Vec::new(),
            })
            .collect();
        store.append("other-1", ExpectedRevision::Any, events).await.unwrap();
        let tip = store.last_position().unwrap();
        assert!(
            store.durable_position().unwrap() < tip,
            "an append is acknowledged before it is durable"
        );
        let projector = Arc::new(Projector::new(
            ViewStore::temporary().unwrap(),
            phonenumber::country::Id::CN,
        ));
        let (stop, stopped) = watch::channel(false);
        let dyn_store: Arc<dyn EventStore> = store.clone();
        let following = tokio::spawn(follow(dyn_store, projector.clone(), stopped));
        let deadline = Instant::now() + Duration::from_secs(10);
        while projector.views().checkpoint().unwrap() != Some(tip) {
            assert!(Instant::now() < deadline, "the projector did not reach the tip");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            store.durable_position().unwrap() >= tip,
            "the views reached {tip:?} while the store was durable only to {:?}",
            store.durable_position()
        );
        stop.send(true).unwrap();
        following.await.unwrap().unwrap();
    }
}
