//! Rebuilding a restarted shard node's book of its users' orders and holds from every node's shards.
//!
//! A node's users buy from shards anywhere in the cluster, and those shards keep the truth (tickets, holds,
//! reservations being paid for). After a restart the node reads, for every concert, what each shard holds for its
//! users (`ShardRequest::BookView`; its own shards in process), and only when it has heard from every node does
//! it fill its book and settle the orders the restart caught in payment. Until then its users' orders, holds,
//! tickets and check-ins answer `503 recovering`, or `503 node_unavailable` naming the node it still waits for
//! (`Desk::book_ready`); everything else (concerts, seats, events, profiles) is served meanwhile. A node that does not answer is asked
//! again every [`BOOK_RETRY_DELAY`].

use engine::EngineError;
use engine::desk::Desk;
use engine::router::ConcertHandle;
use engine::shard_state::ShardBookView;
use futures_util::future::join_all;
use std::sync::Arc;
use std::time::Duration;

/// Pause before asking nodes that did not answer again.
pub const BOOK_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Fills `desk`'s book from every node's view of `concerts`, then settles what was in flight. Marks the book
/// incomplete first; returns once it is complete and every recovered order is settled.
pub async fn rebuild(desk: Arc<Desk>, concerts: Vec<Arc<ConcertHandle>>) {
    desk.set_book_waiting_for(desk.router().node());
    let views = loop {
        match gather(&concerts).await {
            Ok(views) => break views,
            Err(EngineError::NodeUnavailable { node }) => {
                tracing::warn!(node, "waiting for a node to rebuild this node's book");
                desk.set_book_waiting_for(node);
            }
            Err(error) => tracing::warn!(%error, "rebuilding the book failed; retrying"),
        }
        tokio::time::sleep(BOOK_RETRY_DELAY).await;
    };
    let mut in_flight = Vec::new();
    for (concert, views) in concerts.iter().zip(views) {
        in_flight.extend(desk.restore_views(&concert.spec, &views));
    }
    desk.set_book_ready();
    let count = in_flight.len();
    let confirmed = desk.settle_all(in_flight).await;
    tracing::info!(
        concerts = concerts.len(),
        in_flight = count,
        in_flight_confirmed = confirmed,
        in_flight_released = count - confirmed,
        "book rebuilt from every node"
    );
}

/// Every concert's views: this node's shards' and every other node's.
async fn gather(concerts: &[Arc<ConcertHandle>]) -> Result<Vec<Vec<ShardBookView>>, EngineError> {
    let mut all = Vec::with_capacity(concerts.len());
    for concert in concerts {
        let mut views = concert.book_views(Some(concert.node())).await?;
        let remote: Vec<u32> = (0..concert.shard_count())
            .filter(|shard| !concert.local_shards().contains(shard))
            .collect();
        for view in join_all(remote.iter().map(|shard| concert.remote_book_view(*shard))).await {
            views.push(view?);
        }
        all.push(views);
    }
    Ok(all)
}
