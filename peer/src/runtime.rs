//! The round loop.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use gradswarm_core::drift::{pull_halfway, relative_distance};
use gradswarm_core::wire::params_checksum;
use gradswarm_core::{
    Accepted, Aggregator, Averaging, Codec, DecodedUpdate, DriftSketch, DropCounts, EncodeError,
    ErrorFeedback, Heartbeat, ModelHash, OuterOptimizer, PeerState, RngKey, RoundBook, ShardKey,
    Update, UpdateValidator, Weighted, WireLimits,
};
use gradswarm_model::data::validation_batches;
use gradswarm_model::{Batch, Corpus, ModelError, Trainer};
use gradswarm_net::{NetError, NetEvent, NetHandle, PeerId, Topic};
use thiserror::Error;
use tracing::{debug, info, warn};
use web_time::Instant;

use crate::config::PeerConfig;
use crate::report::{PeerSummary, RoundReport};
use crate::state::{self, Snapshots};

/// Why a peer stopped with an error.
#[derive(Debug, Error)]
pub enum PeerError {
    /// Training failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The network task failed or stopped.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Encoding this peer's own update failed.
    #[error("encoding the update: {0}")]
    Encode(#[from] EncodeError),
    /// Fetching the run's state from a peer failed.
    #[error("state sync: {0}")]
    Sync(String),
}

/// Asks a running peer to stop after its current round.
#[derive(Clone)]
pub struct StopHandle(mpsc::UnboundedSender<()>);

impl StopHandle {
    /// Stops the peer at the next opportunity (it finishes the round's bookkeeping first).
    pub fn stop(&self) {
        // A peer that already ended has nothing left to stop.
        let _ = self.0.unbounded_send(());
    }
}

/// A stop handle and the signal a [`Peer`] listens to.
pub fn stop_pair() -> (StopHandle, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded();
    (StopHandle(tx), rx)
}

/// How long a peer that left is not brought back by gossip still in flight from it.
const GONE_GRACE: Duration = Duration::from_secs(5);

struct Seen {
    last: Instant,
    round: u64,
}

/// This replica at the start of a round: what a partner's snapshot of that round is compared with.
struct Mark {
    round: u64,
    params: Arc<Vec<f32>>,
    checksum: u64,
    sketch: DriftSketch,
}

/// Memory the marks of past rounds may take (at least two rounds are kept whatever the model).
const MARK_BUDGET_BYTES: usize = 64 << 20;

/// After a pairwise averaging, heartbeats of the next this many rounds are not looked at: they
/// may predate the partners' halves of the averaging, and acting on them would overshoot.
const RECONCILE_BACKOFF: u64 = 3;

/// A pairwise averaging in flight: the partner, the round, and the partner's θ of that round.
type Reconciling = BoxFuture<'static, (PeerId, u64, Result<Vec<f32>, PeerError>)>;

/// Called after every round with its report and the trainer (to checkpoint it, say).
pub type Observer = Box<dyn FnMut(&RoundReport, &Trainer) + Send>;

/// One peer: its replica, codec state and view of the swarm.
pub struct Peer {
    config: PeerConfig,
    trainer: Trainer,
    corpus: Arc<Corpus>,
    val: Vec<Batch>,
    codec: Box<dyn Codec + Send>,
    feedback: ErrorFeedback,
    book: RoundBook<Arc<DecodedUpdate>>,
    net: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    stop: mpsc::UnboundedReceiver<()>,
    stopped: bool,
    me: PeerId,
    model_hash: ModelHash,
    limits: WireLimits,
    peers: BTreeMap<PeerId, Seen>,
    gone: BTreeMap<PeerId, Instant>,
    joined: std::collections::BTreeSet<PeerId>,
    outer: OuterOptimizer,
    validator: UpdateValidator,
    aggregator: Box<dyn Aggregator + Send>,
    averaging: Box<dyn Averaging>,
    snapshots: Arc<Snapshots>,
    compute_times: VecDeque<f64>,
    drops: DropCounts,
    drops_pending: DropCounts,
    bytes_down: u64,
    samples: u64,
    last_loss: f32,
    min_peers: usize,
    summary: PeerSummary,
    observer: Option<Observer>,
    /// Whether the round loop runs (drift is only looked at once this peer has joined).
    running: bool,
    marks: VecDeque<Mark>,
    max_marks: usize,
    /// The checksum and sketch of θ at the start of the round they name, for heartbeats (kept
    /// apart from the marks, which exist only when pairwise averaging is on).
    fingerprint: Option<(u64, u64, DriftSketch)>,
    /// When the last heartbeat went out.
    last_heartbeat: Option<Instant>,
    reconciling: Option<Reconciling>,
    /// Per partner, the first heartbeat round whose drift is looked at again.
    reconcile_after: BTreeMap<PeerId, u64>,
    /// The first heartbeat round whose drift is looked at again, after an averaging.
    quiet_until: u64,
    /// Heartbeats of rounds this peer has not reached yet, looked at once it has.
    early_heartbeats: BTreeMap<PeerId, Heartbeat>,
    reconciled_pending: u64,
}

impl Peer {
    /// A peer training `trainer` on its shard of `corpus`, over the network behind `net`/`events`.
    /// `codec` must encode `config.codec` (the wgpu codec when the trainer is on wgpu).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: PeerConfig,
        trainer: Trainer,
        corpus: Arc<Corpus>,
        codec: Box<dyn Codec + Send>,
        net: NetHandle,
        events: mpsc::Receiver<NetEvent>,
        stop: mpsc::UnboundedReceiver<()>,
    ) -> Result<Self, PeerError> {
        let n = trainer.num_params();
        let model_hash = trainer.model_config().hash();
        let batch = trainer.config().batch_size;
        let context = trainer.model_config().context;
        let max_samples = (batch as u64) * config.mode.local_steps() * 64;
        let snapshots = Snapshots::new(&config.run_id, model_hash);
        let serving = snapshots.clone();
        net.serve_state(Arc::new(move |request| serving.serve(request)))?;
        let val = if config.eval_every > 0 {
            validation_batches(&corpus, config.eval_batches, batch, context)
        } else {
            Vec::new()
        };
        let me = net.local_peer_id();
        Ok(Self {
            book: RoundBook::new(config.staleness, 0),
            outer: OuterOptimizer::new(config.outer),
            validator: UpdateValidator::new(n, config.max_norm_ratio, 3, 32),
            aggregator: config.aggregation.build(),
            averaging: config.averaging.build(),
            feedback: ErrorFeedback::with_decay(n, config.feedback_decay),
            limits: WireLimits::for_model(n, max_samples),
            summary: PeerSummary {
                peer_id: me.to_base58(),
                ..Default::default()
            },
            config,
            trainer,
            corpus,
            val,
            codec,
            net,
            events,
            stop,
            stopped: false,
            me,
            model_hash,
            peers: BTreeMap::new(),
            gone: BTreeMap::new(),
            joined: Default::default(),
            snapshots,
            compute_times: VecDeque::new(),
            drops: DropCounts::default(),
            drops_pending: DropCounts::default(),
            bytes_down: 0,
            samples: 0,
            last_loss: f32::NAN,
            min_peers: 0,
            observer: None,
            running: false,
            marks: VecDeque::new(),
            fingerprint: None,
            last_heartbeat: None,
            max_marks: (MARK_BUDGET_BYTES / (4 * n).max(1)).clamp(2, 16),
            reconciling: None,
            reconcile_after: BTreeMap::new(),
            quiet_until: 0,
            early_heartbeats: BTreeMap::new(),
            reconciled_pending: 0,
        })
    }

    /// Waits for at least `n` other peers before the first round (harness runs start together).
    pub fn wait_for_peers(&mut self, n: usize) {
        self.min_peers = n;
    }

    /// Calls `observer` after every round (the node's status line, the harness's report).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// The trainer (to checkpoint it after [`Peer::run`]).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// The open round.
    pub fn round(&self) -> u64 {
        self.book.round()
    }

    /// Starts from a restored replica (a checkpoint) at `round`; peers ahead are caught up with.
    pub fn resume_at(&mut self, round: u64) {
        self.book.reset(round);
    }

    /// Joins the run (fetching its state from a peer when one is ahead), then runs rounds until
    /// `config.rounds` or a stop. Returns what happened.
    pub async fn run(&mut self) -> Result<PeerSummary, PeerError> {
        self.join().await?;
        self.summary.start_round = self.book.round();
        self.running = true;
        let params = self.trainer.parameters_async().await?;
        self.mark(params);
        while !self.stopped && self.config.rounds.is_none_or(|r| self.book.round() < r) {
            self.run_round().await?;
            if self.stop.next().now_or_never().flatten().is_some() {
                self.stopped = true;
            }
        }
        if !self.stopped {
            self.linger().await;
        }
        self.summary.drops = self.drops.clone();
        self.summary.final_params = self.trainer.parameters_async().await?;
        // A joiner asking after our last round still gets our state while the network lives.
        self.snapshots.set_round(self.book.round());
        self.snapshots.publish(&self.snapshot().await?);
        Ok(self.summary.clone())
    }

    /// After the last round, stays until every live peer has closed that round too, or a round
    /// deadline passes: peers pull announced updates from their publisher, so one that left at
    /// once would take its last update with it.
    async fn linger(&mut self) {
        let round = self.book.round();
        let until = self.deadline_after(Instant::now());
        while !self.stopped && Instant::now() < until {
            let behind = self
                .live()
                .filter(|p| self.peers.get(*p).is_some_and(|s| s.round < round))
                .count();
            if behind == 0 {
                break;
            }
            if let Some(event) = self.next_event(until).await {
                self.on_event(event);
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &PeerId> {
        let timeout = self.config.peer_timeout;
        self.peers
            .iter()
            .filter(move |(_, s)| s.last.elapsed() < timeout)
            .map(|(p, _)| p)
    }

    fn touch(&mut self, peer: PeerId, round: Option<u64>) {
        if self
            .gone
            .get(&peer)
            .is_some_and(|t| t.elapsed() < GONE_GRACE)
        {
            return;
        }
        let seen = self.peers.entry(peer).or_insert(Seen {
            last: Instant::now(),
            round: 0,
        });
        seen.last = Instant::now();
        if let Some(r) = round {
            seen.round = seen.round.max(r);
        }
    }

    /// The next network event before `until`; None on timeout, stop, or when a pairwise
    /// averaging's state transfer completed (it is applied here, between two events).
    async fn next_event(&mut self, until: Instant) -> Option<NetEvent> {
        enum Wake {
            Net(Option<NetEvent>),
            Timeout,
            Stop,
            Reconciled(PeerId, u64, Result<Vec<f32>, PeerError>),
        }
        let remaining = until.saturating_duration_since(Instant::now());
        let mut timeout = futures_timer::Delay::new(remaining).fuse();
        let events = &mut self.events;
        let stop = &mut self.stop;
        let reconciling = &mut self.reconciling;
        let reconciled = async move {
            match reconciling {
                Some(transfer) => transfer.await,
                None => futures::future::pending().await,
            }
        }
        .fuse();
        futures::pin_mut!(reconciled);
        let wake = futures::select! {
            event = events.next() => Wake::Net(event),
            _ = timeout => Wake::Timeout,
            _ = stop.next() => Wake::Stop,
            (peer, round, theirs) = reconciled => Wake::Reconciled(peer, round, theirs),
        };
        match wake {
            Wake::Net(event) => {
                if event.is_none() {
                    // The network task ended: nothing more will arrive.
                    self.stopped = true;
                }
                event
            }
            Wake::Timeout => None,
            Wake::Stop => {
                self.stopped = true;
                None
            }
            Wake::Reconciled(peer, round, theirs) => {
                self.reconciling = None;
                if let Err(e) = self.finish_reconcile(peer, round, theirs).await {
                    warn!("pairwise averaging with {peer} not applied: {e}");
                }
                None
            }
        }
    }

    /// Remembers this replica, θ = `params`, at the start of the open round, for pairwise
    /// averaging later.
    fn mark(&mut self, params: Vec<f32>) {
        let round = self.book.round();
        let (checksum, sketch) = (params_checksum(&params), DriftSketch::of(&params));
        self.fingerprint = Some((round, checksum, sketch.clone()));
        if self.config.drift_tolerance.is_none() {
            return;
        }
        let params = Arc::new(params);
        self.snapshots.mark(round, params.clone(), self.max_marks);
        self.marks.retain(|m| m.round < round);
        self.marks.push_back(Mark {
            round,
            checksum,
            sketch,
            params,
        });
        while self.marks.len() > self.max_marks {
            self.marks.pop_front();
        }
    }

    /// Starts a pairwise averaging with `from` when its heartbeat's sketch puts its replica
    /// further from ours, at the same round, than the drift tolerance.
    fn check_drift(&mut self, from: PeerId, heartbeat: &Heartbeat) {
        let Some(tolerance) = self.config.drift_tolerance else {
            return;
        };
        // State comes from a peer we are connected to, one transfer at a time.
        if !self.running || self.reconciling.is_some() || !self.joined.contains(&from) {
            return;
        }
        if heartbeat.round < self.quiet_until
            || self
                .reconcile_after
                .get(&from)
                .is_some_and(|&r| heartbeat.round < r)
        {
            return;
        }
        let Some(mark) = self.marks.iter().find(|m| m.round == heartbeat.round) else {
            if heartbeat.round > self.book.round() {
                self.early_heartbeats.insert(from, heartbeat.clone());
            }
            return;
        };
        if mark.checksum == heartbeat.checksum {
            return;
        }
        let Some(drift) = mark.sketch.relative_distance(&heartbeat.sketch) else {
            return;
        };
        if drift <= tolerance {
            return;
        }
        info!(
            "replica of {from} is ~{drift:.1e} from ours at round {}: averaging with it",
            heartbeat.round
        );
        self.reconcile_after
            .insert(from, self.book.round() + RECONCILE_BACKOFF);
        let net = self.net.clone();
        let run_id = self.config.run_id.clone();
        let (model_hash, n) = (self.model_hash, self.trainer.num_params());
        let round = heartbeat.round;
        self.reconciling = Some(
            async move {
                let theirs = state::fetch_params(&net, from, &run_id, model_hash, round, n).await;
                (from, round, theirs)
            }
            .boxed(),
        );
    }

    /// Applies this peer's half of a pairwise averaging with `peer` (DESIGN.md §3: replicas that
    /// drift reconcile pairwise): θ moves halfway to the partner's replica, as of `round`. The
    /// partner, having seen the same two heartbeats, applies the other half with our θ of the
    /// same round, so the difference of that round vanishes and updates applied since carry over.
    async fn finish_reconcile(
        &mut self,
        peer: PeerId,
        round: u64,
        theirs: Result<Vec<f32>, PeerError>,
    ) -> Result<(), PeerError> {
        let theirs = theirs?;
        let Some(mark) = self.marks.iter().find(|m| m.round == round) else {
            return Err(PeerError::Sync(format!(
                "this peer no longer remembers its replica of round {round}"
            )));
        };
        let mine = mark.params.clone();
        let drift = relative_distance(&mine, &theirs);
        if self.config.drift_tolerance.is_none_or(|t| drift <= t) {
            debug!("replica of {peer} at round {round} is {drift:.1e} from ours: close enough");
            return Ok(());
        }
        let mut theta = self.trainer.parameters_async().await?;
        pull_halfway(&mut theta, &mine, &theirs);
        self.trainer.set_parameters(&theta)?;
        self.quiet_until = self.book.round() + RECONCILE_BACKOFF;
        info!("averaged with {peer}'s replica of round {round} (it was {drift:.1e} from ours)");
        self.reconciled_pending += 1;
        *self
            .summary
            .reconciled_with
            .entry(peer.to_base58())
            .or_default() += 1;
        Ok(())
    }

    fn on_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Update {
                from,
                update,
                decoded,
                bytes,
            } => {
                self.bytes_down += bytes as u64;
                self.touch(from, Some(update.round));
                if let Err(reason) = self.validator.validate(decoded.len, &decoded.values) {
                    debug!("update from {from} dropped: {reason}");
                    self.record_drop(reason);
                    return;
                }
                if let Err(reason) = self.book.offer(
                    &update.peer_id,
                    update.round,
                    update.base_round,
                    update.samples,
                    decoded,
                ) {
                    debug!(
                        "update from {from} for round {} dropped: {reason}",
                        update.round
                    );
                    self.record_drop(reason);
                }
            }
            NetEvent::Heartbeat { from, heartbeat } => {
                self.bytes_down += heartbeat.to_bytes().len() as u64;
                self.touch(from, Some(heartbeat.round));
                self.check_drift(from, &heartbeat);
            }
            NetEvent::Dropped { from, reason } => {
                debug!("message from {from} rejected: {reason}");
                self.record_drop(reason);
            }
            NetEvent::PeerJoined(peer) => {
                // Joined the topic: a peer, or a bootstrap node that only forwards. Only heartbeats
                // and updates make a peer one whose update a round waits for.
                self.gone.remove(&peer);
                self.joined.insert(peer);
            }
            NetEvent::PeerLeft(peer) => {
                info!("peer {peer} left");
                self.peers.remove(&peer);
                self.joined.remove(&peer);
                self.early_heartbeats.remove(&peer);
                self.reconcile_after.remove(&peer);
                self.gone.insert(peer, Instant::now());
            }
            NetEvent::Listening(addr) => info!("listening on {addr}"),
        }
    }

    /// At a round's close: a heartbeat if the last is `heartbeat_every` old, or this was the
    /// last round (peers lingering after their own last round wait for it).
    fn heartbeat_at_close(&mut self) {
        let last_round = self.config.rounds.is_some_and(|r| self.book.round() >= r);
        let due = self
            .last_heartbeat
            .is_none_or(|t| t.elapsed() >= self.config.heartbeat_every);
        if due || last_round || self.stopped {
            self.heartbeat();
        }
    }

    fn heartbeat(&mut self) {
        self.last_heartbeat = Some(Instant::now());
        // No read of θ here: in a browser that would block on the GPU. Before the first round
        // (or between a catch-up and its mark) there is no fingerprint, and partners skip the check.
        let (checksum, sketch) = match &self.fingerprint {
            Some((round, checksum, sketch)) if *round == self.book.round() => {
                (*checksum, sketch.clone())
            }
            _ => Default::default(),
        };
        let hb = Heartbeat {
            run_id: self.config.run_id.clone(),
            model_hash: self.model_hash,
            peer_id: self.me.to_bytes(),
            round: self.book.round(),
            checksum,
            loss: self.last_loss,
            sketch,
        };
        if let Err(e) = self.net.publish(Topic::Heartbeat, hb.to_bytes()) {
            debug!("heartbeat: {e}");
        }
    }

    /// Waits for peers; if one is ahead of round 0, fetches the run's state from the most advanced.
    async fn join(&mut self) -> Result<(), PeerError> {
        let started = Instant::now();
        let mut held = Vec::new();
        let mut next_beat = Instant::now();
        loop {
            if Instant::now() >= next_beat {
                self.heartbeat();
                next_beat = Instant::now() + Duration::from_millis(250);
            }
            let enough = self.peers.len() >= self.min_peers;
            let round = self.book.round();
            let ahead = self.peers.values().any(|s| s.round > round);
            // State comes from a peer we are connected to: one only heard of through gossip
            // forwarded by others may not be dialable yet.
            let ahead_here = self
                .peers
                .iter()
                .any(|(p, s)| s.round > round && self.joined.contains(p));
            let waited = started.elapsed() >= self.config.join_wait;
            let waited_long =
                started.elapsed() >= self.config.join_wait * 4 + Duration::from_secs(20);
            if self.stopped || (enough && (ahead_here || (waited && !ahead) || waited_long)) {
                break;
            }
            if let Some(event) = self.next_event(next_beat).await {
                // Updates wait until the round is known: a joiner's book is not at the swarm's round yet.
                if matches!(event, NetEvent::Update { .. }) {
                    held.push(event);
                } else {
                    self.on_event(event);
                }
            }
        }
        let mut ahead: Vec<(bool, u64, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, s)| s.round > self.book.round())
            .map(|(p, s)| (self.joined.contains(p), s.round, *p))
            .collect();
        // Connected peers first, the most advanced first.
        ahead.sort_by(|a, b| b.cmp(a));
        let mut failures = Vec::new();
        for (_, _, peer) in &ahead {
            info!("fetching the run's state from {peer}");
            let n = self.trainer.num_params();
            match state::fetch(&self.net, *peer, &self.config.run_id, self.model_hash, n).await {
                Ok(state) => {
                    self.install(&state)?;
                    self.summary.synced_from = Some(peer.to_base58());
                    info!("synced to round {} from {peer}", state.round);
                    break;
                }
                Err(e) => {
                    warn!("state from {peer}: {e}");
                    failures.push(e.to_string());
                }
            }
        }
        if !ahead.is_empty() && self.summary.synced_from.is_none() {
            // Training from θ₀ in a swarm that is ahead would only produce too-stale updates.
            return Err(PeerError::Sync(format!(
                "no peer served the run's state ({})",
                failures.join("; ")
            )));
        }
        let synced = self.book.round();
        for event in held {
            // Updates of rounds before the snapshot's are already in the θ we installed.
            if matches!(&event, NetEvent::Update { update, .. } if update.round < synced) {
                continue;
            }
            self.on_event(event);
        }
        Ok(())
    }

    fn install(&mut self, state: &PeerState) -> Result<(), PeerError> {
        self.trainer.set_parameters(&state.params)?;
        let (outer, inner): (Vec<_>, Vec<_>) = state
            .optimizer
            .iter()
            .cloned()
            .partition(|(name, _)| name == "outer.momentum");
        self.trainer
            .set_optimizer_state(state.step, state.optimizer_steps, &inner)?;
        if let Some((_, m)) = outer.into_iter().next() {
            self.outer.set_momentum(m);
        }
        self.book.reset(state.round);
        Ok(())
    }

    async fn snapshot(&self) -> Result<PeerState, PeerError> {
        let (optimizer_steps, mut optimizer) = self.trainer.optimizer_state_async().await?;
        if !self.outer.momentum().is_empty() {
            optimizer.push(("outer.momentum".into(), self.outer.momentum().to_vec()));
        }
        Ok(PeerState {
            round: self.book.round(),
            step: self.trainer.step(),
            params: self.trainer.parameters_async().await?,
            optimizer,
            optimizer_steps,
        })
    }

    fn deadline_after(&self, publish: Instant) -> Instant {
        let mut times: Vec<f64> = self.compute_times.iter().copied().collect();
        times.sort_by(f64::total_cmp);
        let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
        let wait = Duration::from_secs_f64((median * self.config.deadline_factor).max(0.0))
            .clamp(self.config.min_wait, self.config.max_wait);
        publish + wait
    }

    /// Local steps from the anchor θ_r (or ahead of it, see `feedback_lookahead`); returns
    /// Δ = start − θ_local, and θ is reset to the anchor.
    async fn compute(&mut self) -> Result<(Vec<f32>, f32, u64), PeerError> {
        let anchor = self.trainer.parameters_async().await?;
        let mut keys: Vec<ShardKey> = self
            .live()
            .map(|p| ShardKey::of(&p.to_bytes()))
            .chain([ShardKey::of(&self.me.to_bytes())])
            .collect();
        keys.sort_by_key(|k| k.value());
        let me = ShardKey::of(&self.me.to_bytes());
        let seed = self.trainer.config().seed;
        let corpus = self.corpus.clone();
        let sampler = corpus.sampler(me, &keys, 0, seed);
        self.trainer
            .set_replicas(if self.config.global_second_moment {
                keys.len()
            } else {
                1
            });
        let ahead = if self.config.feedback_lookahead {
            // This peer's share of the mean, as if every live peer's update came in.
            let c = self.config.outer.eventual_step() / keys.len() as f32;
            let ahead = self.feedback.ahead_of(&anchor, c)?;
            self.trainer.set_parameters(&ahead)?;
            Some(ahead)
        } else {
            None
        };
        let reports = match self
            .trainer
            .local_steps_async(&sampler, self.config.mode.local_steps())
            .await
        {
            Ok(reports) => reports,
            Err(e) => {
                // A diverged step leaves θ where the steps before it (or the look-ahead) put
                // it: back to the anchor, so this replica stays the swarm's.
                self.trainer.set_parameters(&anchor)?;
                return Err(e.into());
            }
        };
        let local = self.trainer.parameters_async().await?;
        self.trainer.set_parameters(&anchor)?;
        let start = ahead.as_deref().unwrap_or(&anchor);
        let delta = start.iter().zip(&local).map(|(a, l)| a - l).collect();
        let loss = reports.iter().map(|r| r.loss).sum::<f32>() / reports.len().max(1) as f32;
        let samples = reports.len() as u64 * self.trainer.config().batch_size as u64;
        Ok((delta, loss, samples))
    }

    /// The aggregate of a round's updates; None for an empty round (or the rule refusing it).
    fn aggregate(
        &mut self,
        round: u64,
        entries: &[Accepted<Arc<DecodedUpdate>>],
    ) -> Option<Vec<f32>> {
        if entries.is_empty() {
            return None;
        }
        let n = self.trainer.num_params();
        let dense: Vec<Vec<f32>> = entries
            .iter()
            .map(|a| {
                let mut v = vec![0.0f32; n];
                a.payload.add_to(1.0, &mut v);
                v
            })
            .collect();
        let inputs: Vec<Weighted<'_>> = entries
            .iter()
            .zip(&dense)
            .map(|(a, v)| Weighted {
                weight: a.weight as f32,
                values: v,
            })
            .collect();
        match self.aggregator.aggregate(&inputs) {
            Ok(aggregate) => Some(aggregate),
            Err(e) => {
                warn!("round {round}: no aggregate ({e})");
                None
            }
        }
    }

    fn count_from(&mut self, accepted: &Accepted<Arc<DecodedUpdate>>, report: &mut RoundReport) {
        report.updates += 1;
        report.staleness.push(accepted.tau);
        if accepted.peer != self.me.to_bytes() {
            let name = PeerId::from_bytes(&accepted.peer)
                .map(|p| p.to_base58())
                .unwrap_or_else(|_| "?".into());
            *self.summary.counted_from.entry(name).or_default() += 1;
        }
    }

    /// Closes the open round: late parts of earlier rounds are applied as if they had been in time,
    /// then this round's aggregate (θ is read and written once, whatever the number of parts).
    async fn close_round(&mut self, report: &mut RoundReport) -> Result<(), PeerError> {
        let closed = self.book.close();
        self.drops.merge(&closed.dropped);
        self.drops_pending.merge(&closed.dropped);
        report.round = closed.round;
        let mut moves: Vec<(Vec<f32>, Option<u64>)> = Vec::new();
        for correction in &closed.corrections {
            for added in correction.added() {
                self.count_from(added, report);
            }
            let after = self.aggregate(correction.round, &correction.after);
            let before = self.aggregate(correction.round, &correction.before);
            let Some(mut delta) = after else { continue };
            if let Some(before) = before {
                delta.iter_mut().zip(&before).for_each(|(d, b)| *d -= b);
            }
            // Rounds correction.round ..= closed.round − 1 have been applied since.
            moves.push((delta, Some(closed.round - correction.round)));
        }
        for accepted in &closed.accepted {
            self.count_from(accepted, report);
        }
        if let Some(aggregate) = self.aggregate(closed.round, &closed.accepted) {
            moves.push((aggregate, None));
        }
        if moves.is_empty() {
            return Ok(());
        }
        let mut theta = self.trainer.parameters_async().await?;
        for (delta, rounds_ago) in &moves {
            if delta.len() != theta.len() {
                return Err(ModelError::ParamLength {
                    got: delta.len(),
                    expected: theta.len(),
                }
                .into());
            }
            match rounds_ago {
                Some(ago) => self.outer.apply_late(&mut theta, delta, *ago),
                None => self.outer.apply(&mut theta, delta),
            }
        }
        self.trainer.set_parameters(&theta)?;
        Ok(())
    }

    async fn finish_report(&mut self, mut report: RoundReport) -> Result<(), PeerError> {
        let params = self.trainer.parameters_async().await?;
        report.checksum = params_checksum(&params);
        report.peers = self.live().count();
        report.samples = self.samples;
        report.bytes_down = std::mem::take(&mut self.bytes_down);
        report.drops = std::mem::take(&mut self.drops_pending);
        report.reconciled = std::mem::take(&mut self.reconciled_pending);
        if self.config.eval_every > 0 && (report.round + 1).is_multiple_of(self.config.eval_every) {
            report.val_loss = Some(self.trainer.evaluate_async(&self.val).await?);
        }
        debug!(
            "round {} closed: loss {:.3}, {} updates, staleness {:?}, {} live peers",
            report.round, report.loss, report.updates, report.staleness, report.peers
        );
        self.mark(params);
        let round = self.book.round();
        let (now, later): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.early_heartbeats)
                .into_iter()
                .partition(|(_, hb)| hb.round <= round);
        self.early_heartbeats = later;
        for (from, heartbeat) in now {
            self.check_drift(from, &heartbeat);
        }
        self.snapshots.set_round(round);
        if self.snapshots.wanted() {
            let state = self.snapshot().await?;
            self.snapshots.publish(&state);
            debug!("snapshot of round {} ready for joiners", state.round);
        }
        self.heartbeat_at_close();
        if let Some(observer) = self.observer.as_mut() {
            observer(&report, &self.trainer);
        }
        self.summary.rounds.push(report);
        Ok(())
    }

    /// Counts a dropped update in the run's total and in the next round report.
    fn record_drop(&mut self, reason: gradswarm_core::DropReason) {
        self.drops.record(reason);
        self.drops_pending.record(reason);
    }

    /// One round: local work, catch up, encode, publish, collect, aggregate, apply.
    async fn run_round(&mut self) -> Result<(), PeerError> {
        let base = self.book.round();
        let t0 = Instant::now();
        let computed = match self.compute().await {
            Ok(c) => Some(c),
            Err(PeerError::Model(ModelError::Diverged { step, loss })) => {
                // A NaN or infinite loss: send nothing this round, keep θ and the residual.
                warn!("local step {step} diverged (loss {loss}); skipping this round's update");
                None
            }
            Err(e) => return Err(e),
        };
        let compute_s = t0.elapsed().as_secs_f64();
        if self.config.slowdown > 1.0 {
            let extra = compute_s * (self.config.slowdown - 1.0);
            futures_timer::Delay::new(Duration::from_secs_f64(extra)).await;
        }
        self.compute_times.push_back(t0.elapsed().as_secs_f64());
        if self.compute_times.len() > 9 {
            self.compute_times.pop_front();
        }

        // Take in what arrived while computing; if the swarm moved on, close the rounds we missed.
        while let Some(event) = self.next_event(Instant::now()).await {
            self.on_event(event);
        }
        while self
            .book
            .latest_published()
            .is_some_and(|r| r > self.book.round())
        {
            let mut report = RoundReport {
                loss: f32::NAN,
                catch_up: true,
                ..Default::default()
            };
            self.close_round(&mut report).await?;
            self.finish_report(report).await?;
        }

        let mut report = RoundReport {
            compute_s,
            ..Default::default()
        };
        let t1 = Instant::now();
        if let Some((delta, loss, samples)) = computed {
            self.last_loss = loss;
            report.loss = loss;
            self.samples += samples;
            let round = self.book.round();
            let key = RngKey::new(shard_seed(&self.me), round);
            let payload = self.feedback.encode(self.codec.as_mut(), &delta, key)?;
            let update = Update {
                run_id: self.config.run_id.clone(),
                model_hash: self.model_hash,
                peer_id: self.me.to_bytes(),
                round,
                base_round: base,
                samples,
                codec: self.codec.descriptor(),
                payload,
            };
            // Our own update counts as the others will see it: D(C(u)), not Δ.
            let own = update
                .decode_payload(&self.limits)
                .map_err(|e| PeerError::Sync(format!("own update does not decode: {e}")))?;
            if let Err(reason) =
                self.book
                    .offer(&update.peer_id, round, base, samples, Arc::new(own))
            {
                self.record_drop(reason);
            }
            report.bytes_up = self.net.publish_update(update)? as u64;
        }
        report.encode_s = t1.elapsed().as_secs_f64();

        // Collect until every partner's update is in (every live peer's, with broadcast),
        // someone moved on, or the deadline.
        let t2 = Instant::now();
        let deadline = self.deadline_after(t2);
        loop {
            let round = self.book.round();
            let live: Vec<Vec<u8>> = self.live().map(|p| p.to_bytes()).collect();
            let me = self.me.to_bytes();
            let partners = self.averaging.partners(round, &me, &live);
            if self.book.has_all(partners)
                || self.book.latest_published().is_some_and(|r| r > round)
                || self.stopped
            {
                break;
            }
            match self.next_event(deadline).await {
                Some(event) => self.on_event(event),
                None if Instant::now() >= deadline || self.stopped => break,
                None => {}
            }
        }
        report.network_s = t2.elapsed().as_secs_f64();
        self.close_round(&mut report).await?;
        self.finish_report(report).await
    }
}

/// A per-peer seed for the codec's stochastic rounding, so peers round independently.
fn shard_seed(peer: &PeerId) -> u64 {
    ShardKey::of(&peer.to_bytes()).value()
}
