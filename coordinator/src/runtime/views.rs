//! What callers read: one transaction, a page of the listing, the decision
//! a participant asks for (R2), each from memory while the transaction is
//! live and from the store after; and where one that is neither is driven.

use crate::protocol::two_phase::Decision;
use crate::protocol::two_phase::Outcome;
use crate::runtime::error::Error;
use crate::runtime::requests::Committed;
use crate::runtime::requests::Page;
use crate::runtime::shared::Runtime;
use crate::store::ListQuery;

use crate::model::TxnId;
use crate::model::TxnKind;
use crate::model::TxnState;
use crate::model::TxnView;
use crate::runtime::shared::UNFINISHED;
use crate::runtime::two_phase::live::LiveTxn;
use std::sync::Arc;

impl Runtime {
    /// Everything known about one transaction.
    pub async fn transaction(&self, id: TxnId) -> Result<TxnView, Error> {
        self.in_group(id)?;
        if let Some(txn) = self.shared.live.get(&id).map(|t| Arc::clone(&t)) {
            return Ok(txn.view(true));
        }
        if let Some(saga) = self.shared.sagas.get(&id).map(|s| Arc::clone(&s)) {
            return Ok(saga.view(true));
        }
        if let Some(message) = self.shared.messages.get(&id).map(|m| Arc::clone(&m)) {
            return Ok(message.view(true));
        }
        self.shared
            .store
            .transaction(&id)
            .await?
            .ok_or(Error::NotFound(id))
    }

    /// A page of transactions, newest first; live ones show their current
    /// state.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        // A live transaction's stored state can lag its real one (PREPARING
        // is stored as ACTIVE; a decision or an end becomes visible with its
        // record). So the store is asked for the requested states plus every
        // unfinished one, and the live state decides.
        let mut stored = query.clone();
        // A text search cannot use an index: each call reads at most
        // `text_scan_window` transactions below its cursor, and a short page
        // then carries the window's end as its next page token (DESIGN §12:
        // no request can make a node read its whole log).
        let floor = match &query.text {
            Some(_) => {
                self.shared
                    .store
                    .id_floor(query.before, self.shared.config.text_scan_window)
                    .await?
            }
            None => None,
        };
        stored.since = floor;
        if !stored.states.is_empty() {
            for state in UNFINISHED {
                if !stored.states.contains(&state) {
                    stored.states.push(state);
                }
            }
        }
        let mut views = self.shared.store.list(&stored).await?;
        // A full page from the store may have more behind it, whatever the
        // filter below keeps.
        let next = match views.last() {
            Some(last) if views.len() as u32 == query.limit => Some(last.id),
            _ => floor,
        };
        for view in &mut views {
            if let Some(txn) = self.shared.live.get(&view.id) {
                *view = txn.view(false);
            } else if let Some(saga) = self.shared.sagas.get(&view.id) {
                *view = saga.view(false);
            } else if let Some(message) = self.shared.messages.get(&view.id) {
                *view = message.view(false);
            }
        }
        self.merge_live(query, &mut views, next);
        if !query.states.is_empty() {
            views.retain(|view| query.states.contains(&view.state));
        }
        if query.needs_attention {
            views.retain(|view| view.needs_attention);
        }
        if views.len() > query.limit as usize {
            views.truncate(query.limit as usize);
            return Ok(Page {
                next: views.last().map(|view| view.id),
                views,
            });
        }
        Ok(Page { views, next })
    }

    /// Adds the transactions and sagas in memory that the store does not
    /// show yet: a transaction committed inside its Begin is recorded with
    /// its decision, so until then (all of its prepare phase, seconds if a
    /// participant is slow) only memory knows it; and a saga's
    /// NEEDS_ATTENTION flag is written without waiting (it decides
    /// nothing). Every stuck transaction must be visible. Only ids inside
    /// this page's range are added, so pages never repeat; the caller
    /// filters them like the others.
    fn merge_live(&self, query: &ListQuery, views: &mut Vec<TxnView>, next: Option<TxnId>) {
        let in_page = |id: TxnId| {
            query.before.is_none_or(|before| id < before)
                && next.is_none_or(|oldest| id > oldest)
                && !views.iter().any(|view| view.id == id)
        };
        // A text search looks at each one's endpoints in place, and makes a
        // view only of those that match.
        let text = query.text.as_deref();
        let mut missing: Vec<TxnView> = self
            .shared
            .live
            .iter()
            .filter(|txn| in_page(txn.header.id) && text.is_none_or(|text| txn.mentions(text)))
            .map(|txn| txn.view(false))
            .collect();
        missing.extend(
            self.shared
                .sagas
                .iter()
                .filter(|saga| {
                    in_page(saga.header.id) && text.is_none_or(|text| saga.mentions(text))
                })
                .map(|saga| saga.view(false)),
        );
        if missing.is_empty() {
            return;
        }
        views.extend(missing);
        views.sort_by_key(|view| std::cmp::Reverse(view.id));
    }

    /// The decision, for a participant holding a prepared branch. R2: an
    /// unknown transaction is aborted.
    pub async fn outcome(&self, id: TxnId) -> Result<Option<Decision>, Error> {
        // Another group's transaction is not in this group's log: never
        // presume it aborted here (R2 belongs to the group that owns it).
        self.in_group(id)?;
        if let Some(txn) = self.shared.live.get(&id).map(|t| Arc::clone(&t)) {
            let inner = txn.lock();
            return Ok(inner.machine.announced().map(Outcome::decision));
        }
        if self.shared.sagas.contains_key(&id) {
            return Ok(None);
        }
        // A message is "committed" once its producer's local transaction
        // is known to have (DESIGN §10).
        if let Some(message) = self.shared.messages.get(&id) {
            return Ok(match message.state() {
                TxnState::Prepared => None,
                TxnState::Dropped => Some(Decision::Abort),
                _ => Some(Decision::Commit),
            });
        }
        let view = self.shared.store.transaction(&id).await?;
        Ok(Some(match view.map(|v| v.state) {
            Some(
                TxnState::Committed
                | TxnState::Committing
                | TxnState::Completed
                | TxnState::Delivering
                | TxnState::Delivered,
            ) => Decision::Commit,
            // Active in the store but not in memory here: on a shared store
            // another node may be deciding it right now, so only the owner
            // may answer (DESIGN §6). On a node's own store it cannot be
            // live anywhere: presumed abort (R2).
            Some(TxnState::Active) if self.shared.store.cluster().is_some() => {
                return Err(self.elsewhere(id).await);
            }
            Some(TxnState::Running | TxnState::Compensating | TxnState::Prepared) => {
                return Ok(None);
            }
            _ => Decision::Abort,
        }))
    }

    /// Why a transaction unfinished in the store is not in memory here, as
    /// the error to answer: on a shared store, where it is being driven.
    pub(super) async fn elsewhere(&self, id: TxnId) -> Error {
        let not_loaded =
            || Error::Unavailable(format!("transaction {id} is not loaded yet; retry"));
        let Some(cluster) = self.shared.store.cluster() else {
            return not_loaded();
        };
        match cluster.owner_of(&id).await {
            Ok(None) => Error::NotFound(id),
            Ok(Some(owner)) if owner.is_self => not_loaded(),
            Ok(Some(owner)) if owner.live && !owner.address.is_empty() => Error::OwnedElsewhere {
                id,
                address: owner.address,
            },
            Ok(Some(owner)) => Error::Unavailable(format!(
                "transaction {id} belongs to coordinator node {}, which is gone; a live node \
                 takes it over within one lease ({} ms); retry",
                owner.node,
                cluster.lease().as_millis()
            )),
            Err(error) => Error::Store(error),
        }
    }

    pub(super) async fn live_or_finished(&self, id: TxnId) -> Result<Arc<LiveTxn>, Error> {
        if let Some(txn) = self.shared.live.get(&id) {
            return Ok(Arc::clone(&txn));
        }
        match self.shared.store.transaction(&id).await? {
            Some(view) if view.kind != TxnKind::TwoPhase => Err(Error::NotTwoPhase(id)),
            Some(view) if view.state == TxnState::Active => Err(self.elsewhere(id).await),
            Some(view) => Err(Error::Finished {
                id,
                state: view.state,
            }),
            None => Err(Error::NotFound(id)),
        }
    }

    /// The outcome of a transaction no longer in memory.
    pub(super) async fn finished_outcome(&self, id: TxnId) -> Result<Committed, Error> {
        let view = self
            .shared
            .store
            .transaction(&id)
            .await?
            .ok_or(Error::NotFound(id))?;
        if view.kind != TxnKind::TwoPhase {
            return Err(Error::NotTwoPhase(id));
        }
        let outcome = match view.state {
            TxnState::Committed | TxnState::Committing => Outcome::Committed {
                read_only: view.read_only,
            },
            TxnState::Aborted | TxnState::Aborting => Outcome::Aborted {
                reason: view.reason.unwrap_or_default(),
            },
            _ => return Err(self.elsewhere(id).await),
        };
        Ok(Committed {
            outcome,
            state: view.state,
        })
    }
}
