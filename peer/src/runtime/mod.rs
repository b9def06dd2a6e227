//! The round loop of one peer. Its jobs live in modules of their own: [`events`] (the network's
//! events, who is live), [`round`] (one round from local steps to the applied aggregate), [`join`]
//! (joining and state sync), [`drift`] (replica fingerprints and pairwise averaging),
//! [`heartbeat`], [`credit`] and [`linger`] (the end of a run). Each adds methods to [`Peer`], whose fields live here.

mod credit;
mod drift;
mod events;
mod group;
mod heartbeat;
mod join;
mod linger;
mod round;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use gradswarm_core::credit::CreditLedger;
use gradswarm_core::drift::Verdict;
use gradswarm_core::view::RunView;
use gradswarm_core::{
    Aggregator, Averaging, Codec, DecodedUpdate, DropCounts, ErrorFeedback, Factors, Marks,
    ModelHash, OuterOptimizer, RoundBook, Standing, Update, UpdateValidator, WireLimits,
};
use gradswarm_model::data::validation_batches;
use gradswarm_model::{Batch, Corpus, ModelError, Trainer};
use gradswarm_net::{NetEvent, NetHandle, PeerId};
use web_time::Instant;

use crate::config::PeerConfig;
use crate::edge::{Edge, Honest};
use crate::error::PeerError;
use crate::report::{PeerSummary, RoundReport};
use crate::state::{Fingerprint, Snapshots};

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

/// Pauses and resumes a running peer without it leaving: paused, it trains nothing, heartbeats
/// on (saying `throttled`, so nobody waits for it) and closes the rounds the swarm moves on as
/// skipped, so it resumes at the swarm's round.
#[derive(Clone, Default)]
pub struct PauseHandle(Arc<std::sync::atomic::AtomicBool>);

impl PauseHandle {
    /// Pauses (true) or resumes (false) the peer from its next round on.
    pub fn set(&self, paused: bool) {
        self.0.store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    /// Flips the state; returns whether the peer is now paused.
    pub fn toggle(&self) -> bool {
        !self.0.fetch_xor(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the peer is paused.
    pub fn is_paused(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A stop handle and the signal a [`Peer`] listens to.
pub fn stop_pair() -> (StopHandle, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded();
    (StopHandle(tx), rx)
}

/// What this peer knows of another: when it was last heard from, and what its latest heartbeat said.
struct Seen {
    last: Instant,
    round: u64,
    /// The latest heartbeat's round and its `published` rounds (bit `i`: round − 1 − i).
    published: (u64, u64),
    /// Whether that heartbeat said its sender is done and holds every update (see [`Peer::linger`]).
    settled: bool,
    /// Whether that heartbeat said its sender trains only part of the time: not waited for.
    throttled: bool,
    /// How many peers that heartbeat said its sender heard from ([`gradswarm_core::swarm_size`]).
    heard: u32,
    /// The gossip sequence number of that heartbeat: an older one that comes later is not taken.
    sequence: u64,
    /// Rounds that ran to their deadline without this peer's update, less its updates that
    /// counted: at [`MISSED_LIMIT`], rounds stop waiting for it (and its shard goes back to the
    /// others) until updates of its count again.
    missed: u32,
}

/// Rounds a live peer may leave waiting (net of its updates that counted) before rounds stop waiting for it: a peer that
/// only heartbeats, or only sends updates that are refused, would otherwise make every round run
/// to its deadline.
const MISSED_LIMIT: u32 = 2;

/// Memory the marks of past rounds may take (at least two rounds are kept whatever the model,
/// and older ones on a stride that lets them live until sealed: [`Marks::stride`]).
const MARK_BUDGET_BYTES: usize = 64 << 20;

/// A reconciliation in flight: the partner, the round, how far to move, and the partner's mark of
/// that round with its exact distance from ours.
type Reconciling = BoxFuture<'static, (PeerId, u64, Verdict, Result<(Vec<f32>, f64), PeerError>)>;

/// A poll of fingerprints in flight: the round, and the answers that came.
type Polling = BoxFuture<'static, (u64, Vec<(PeerId, Fingerprint)>)>;

/// Called after every round with its report, the trainer and [`Peer::local_state`] (to checkpoint
/// them, say).
pub type Observer = Box<dyn FnMut(&RoundReport, &Trainer, &[(&str, &[f32])]) + Send>;

/// Called every so many rounds, and when the peer leaves, with a checkpoint's bytes (the
/// node's safetensors format, read without blocking on the device) and the round it resumes at:
/// a browser tab keeps them, having no file system of its own to write to.
pub type CheckpointSink = Box<dyn FnMut(u64, Vec<u8>) + Send>;

/// Checkpoint key of the error-feedback residual: what this peer computed but has not sent yet.
pub const RESIDUAL_KEY: &str = "feedback.residual";
/// Checkpoint key of the outer optimizer's momentum (Nesterov; SGD keeps none).
pub const MOMENTUM_KEY: &str = "outer.momentum";

/// The peer's state beside θ and the inner optimizer, as [`Peer::local_state`] names it.
fn local_state<'a>(
    feedback: &'a ErrorFeedback,
    outer: &'a OuterOptimizer,
) -> Vec<(&'static str, &'a [f32])> {
    let mut state = vec![(RESIDUAL_KEY, feedback.residual())];
    if !outer.momentum().is_empty() {
        state.push((MOMENTUM_KEY, outer.momentum()));
    }
    state
}

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
    joined: BTreeSet<PeerId>,
    outer: OuterOptimizer,
    validator: UpdateValidator,
    aggregator: Box<dyn Aggregator + Send>,
    averaging: Box<dyn Averaging>,
    snapshots: Arc<Snapshots>,
    compute_times: VecDeque<f64>,
    drops: DropCounts,
    drops_pending: DropCounts,
    bytes_down: u64,
    /// When the updates that counted arrived (round, sender, Unix ms), for the round's report:
    /// with the senders' `sent_at_ms`, how long updates spent in flight.
    arrivals: Vec<(u64, PeerId, f64)>,
    /// Whether arrivals were left out since the last report (`MAX_ARRIVALS` full).
    arrivals_overflowed: bool,
    /// Bytes published and received over the whole run (heartbeats tell them).
    bytes_sent: u64,
    bytes_received: u64,
    /// What this peer counted of each other's updates (its heartbeats attest it).
    ledger: CreditLedger,
    /// The run as the heartbeats heard show it: the others' claims and attestations.
    view: RunView,
    /// When this peer was made: the view's clock.
    born: Instant,
    samples: u64,
    last_loss: f32,
    /// The latest validation loss (NaN before the first evaluation), for heartbeats.
    last_val_loss: f32,
    /// Training tokens per second of compute over the last round trained (heartbeats tell it).
    tokens_per_s: f32,
    min_peers: usize,
    summary: PeerSummary,
    observer: Option<Observer>,
    /// Every how many rounds, and to what, checkpoints go ([`Peer::set_checkpoint_sink`]).
    checkpoints: Option<(u64, CheckpointSink)>,
    /// Where messages leave this peer ([`Honest`] unless an experiment set an attacker's).
    edge: Box<dyn Edge>,
    /// Whether the round loop runs (drift is only looked at once this peer has joined).
    running: bool,
    /// Whether it started from its own checkpoint ([`Peer::resume_at`]): catching up then keeps
    /// its own AdamW moments.
    resumed: bool,
    /// When this replica last found itself too far behind and fetched the run's state again.
    resynced_at: Option<Instant>,
    /// Pauses the peer ([`Peer::set_pause_handle`]).
    pause: PauseHandle,
    /// Whether the last round was sat out paused (a change is heartbeated at once).
    sitting_out: bool,
    /// θ at recent round starts, corrected by late updates until sealed: what drift repair
    /// compares and a new group averages (kept only when either is on).
    marks: Marks,
    /// The fingerprints of the sealed marks, by round: what drift repair compares, and the
    /// latest heartbeats carry.
    sealed: BTreeMap<u64, Fingerprint>,
    /// The peers' updates over the recent sealed rounds, judged for collusion
    /// ([`gradswarm_core::standing`]).
    standing: Standing,
    /// The standing factors each open or correctable round was aggregated with, so that a late
    /// update's correction weighs the round as its close did.
    factors: BTreeMap<u64, Factors>,
    /// The wire form of the updates the round book holds for its unsealed, open and future
    /// rounds, by round and sender: what a snapshot carries so that a joiner holds the same
    /// recent rounds (`PeerState::recent`).
    recent: BTreeMap<(u64, Vec<u8>), Arc<Update>>,
    /// θ at the start of the round it names, as heartbeats describe it (kept apart from the
    /// marks, which exist only when pairwise averaging is on).
    fingerprint: Option<Fingerprint>,
    /// The rounds this peer published an update for (the last 64), for heartbeats.
    published: VecDeque<u64>,
    /// Past its last round, holding every update the others said they published.
    settled: bool,
    /// When the last heartbeat went out.
    last_heartbeat: Option<Instant>,
    /// How many `heartbeat_every`s apart this peer heartbeats, and how much longer than
    /// `peer_timeout` it waits to hear from a peer before taking it for gone
    /// ([`gradswarm_core::Averaging::heartbeat_spacing`] of the swarm's size at the last heartbeat).
    heartbeat_spacing: u32,
    reconciling: Option<Reconciling>,
    /// Fingerprints of one round being asked of the replicas that have not voted on it.
    polling: Option<Polling>,
    /// The last round polled: each round is polled once.
    polled: u64,
    /// Per partner, the first sealed round whose drift is looked at again.
    reconcile_after: BTreeMap<PeerId, u64>,
    /// The first sealed round whose drift is looked at again, after an averaging.
    quiet_until: u64,
    /// Per round, the sealed mark each peer's heartbeat described (rounds this peer holds marks
    /// of, and a horizon ahead, looked at once it seals them).
    votes: BTreeMap<u64, BTreeMap<PeerId, Fingerprint>>,
    reconciled_pending: u64,
    /// Distances to replicas heard at this peer's round since the last report.
    divergences: BTreeMap<PeerId, f64>,
    /// Under group averaging, this peer's group of each recent round as it was when it first
    /// acted on it (regrouped with it, or pushed its update to it): see `Peer::commit_partners`.
    committed: BTreeMap<u64, Vec<PeerId>>,
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
        let snapshots = Snapshots::new(&config.run_id, model_hash);
        let serving = snapshots.clone();
        net.serve_state(Arc::new(move |from, request| serving.serve(from, request)))?;
        // Only group averaging takes updates pushed outside gossip (and its signatures, scores
        // and equivocation checks); under broadcast a push is refused.
        net.accept_pushes(config.averaging.build().to_partners_only())?;
        let val = if config.eval_every > 0 {
            validation_batches(&corpus, config.eval_batches, batch, context)
        } else {
            Vec::new()
        };
        let me = net.local_peer_id();
        let book = RoundBook::new(config.staleness, 0);
        // Marks of a horizon of rounds until they seal, and as many sealed ones, whose votes
        // may come a while later, where the budget allows.
        let horizon = book.horizon();
        // A mark is θ, and the outer momentum too where the optimizer keeps one.
        let parts = if config.outer.has_momentum() { 2 } else { 1 };
        let keep = (MARK_BUDGET_BYTES / (4 * n * parts).max(1)).min(2 * horizon as usize + 2);
        let marks = Marks::new(config.outer, horizon, keep);
        let standing = Standing::new(config.standing.unwrap_or_default());
        Ok(Self {
            book,
            outer: OuterOptimizer::new(config.outer),
            validator: UpdateValidator::new(n),
            aggregator: config.aggregation.build(),
            averaging: config.averaging.build(),
            feedback: ErrorFeedback::with_decay(n, config.feedback_decay),
            limits: config.wire_limits(n, batch),
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
            arrivals: Vec::new(),
            arrivals_overflowed: false,
            bytes_sent: 0,
            bytes_received: 0,
            ledger: CreditLedger::default(),
            view: RunView::default(),
            born: Instant::now(),
            recent: BTreeMap::new(),
            samples: 0,
            last_loss: f32::NAN,
            last_val_loss: f32::NAN,
            tokens_per_s: 0.0,
            min_peers: 0,
            observer: None,
            checkpoints: None,
            edge: Box::new(Honest),
            running: false,
            resumed: false,
            resynced_at: None,
            pause: PauseHandle::default(),
            sitting_out: false,
            marks,
            sealed: BTreeMap::new(),
            standing,
            factors: BTreeMap::new(),
            fingerprint: None,
            published: VecDeque::new(),
            settled: false,
            last_heartbeat: None,
            heartbeat_spacing: 1,
            reconciling: None,
            polling: None,
            polled: 0,
            reconcile_after: BTreeMap::new(),
            quiet_until: 0,
            votes: BTreeMap::new(),
            reconciled_pending: 0,
            divergences: BTreeMap::new(),
            committed: BTreeMap::new(),
        })
    }

    /// Waits for at least `n` other peers before the first round (harness runs start together).
    pub fn wait_for_peers(&mut self, n: usize) {
        self.min_peers = n;
    }

    /// Pauses and resumes this peer through `pause` (see [`PauseHandle`]).
    pub fn set_pause_handle(&mut self, pause: PauseHandle) {
        self.pause = pause;
    }

    /// Whether partners should not wait for this peer's updates: it trains part of the time.
    fn throttled(&self) -> bool {
        self.config.duty_cycle < 1.0 || self.pause.is_paused()
    }

    /// Hands `sink` a checkpoint every `every` rounds (0: only when leaving) and when leaving.
    pub fn set_checkpoint_sink(&mut self, every: u64, sink: CheckpointSink) {
        self.checkpoints = Some((every, sink));
    }

    /// A checkpoint of the open round to the sink, if there is one; a failed read is logged,
    /// and the next checkpoint may work.
    pub(super) async fn checkpoint(&mut self) {
        if self.checkpoints.is_none() {
            return;
        }
        let round = self.book.round();
        let state = local_state(&self.feedback, &self.outer);
        let bytes = gradswarm_model::checkpoint::to_bytes_async(
            &self.trainer,
            &self.config.run_id,
            round,
            &state,
        )
        .await;
        match bytes {
            Ok(bytes) => {
                if let Some((_, sink)) = self.checkpoints.as_mut() {
                    sink(round, bytes);
                }
            }
            Err(e) => tracing::warn!("checkpoint of round {round}: {e}"),
        }
    }

    /// Calls `observer` after every round (the node's status line, the harness's report).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Sends this peer's messages through `edge` (the harness's attacker peers; see [`Edge`]).
    pub fn set_edge(&mut self, edge: Box<dyn Edge>) {
        self.edge = edge;
    }

    /// The trainer (to checkpoint it after [`Peer::run`]).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// The open round.
    pub fn round(&self) -> u64 {
        self.book.round()
    }

    /// This peer's state beside the trainer's, which a checkpoint must keep for a restart to go on
    /// where it stopped: the error-feedback residual ([`RESIDUAL_KEY`]: updates computed but not
    /// sent yet, lost otherwise) and the outer momentum ([`MOMENTUM_KEY`], when there is one).
    pub fn local_state(&self) -> Vec<(&'static str, &[f32])> {
        local_state(&self.feedback, &self.outer)
    }

    /// Restores one vector of [`Peer::local_state`] from a checkpoint; an unknown key or a vector
    /// of another length than the model's is an error, and changes nothing.
    pub fn restore_local_state(&mut self, key: &str, values: Vec<f32>) -> Result<(), PeerError> {
        let n = self.trainer.num_params();
        if values.len() != n {
            return Err(ModelError::ParamLength {
                got: values.len(),
                expected: n,
            }
            .into());
        }
        match key {
            RESIDUAL_KEY => self.feedback.set_residual(values),
            MOMENTUM_KEY => self.outer.set_momentum(values),
            other => {
                return Err(PeerError::Sync(format!(
                    "no peer state is called {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// Starts from a restored replica (a checkpoint) at `round`. If the swarm moved on meanwhile,
    /// it catches up as a joiner does (a state the others vouch for), but takes only what the
    /// replicas share from it (θ, outer momentum, round, schedule step): its AdamW moments and
    /// error-feedback residual stay the checkpoint's, its own.
    pub fn resume_at(&mut self, round: u64) {
        self.book.reset(round);
        self.resumed = true;
    }

    /// Joins the run (fetching its state from a peer when one is ahead), then runs rounds until
    /// `config.rounds` or a stop. Returns what happened.
    pub async fn run(&mut self) -> Result<PeerSummary, PeerError> {
        self.join().await?;
        self.summary.start_round = self.book.round();
        self.running = true;
        // The count of peers it goes on with, told at once: every peer draws its groups from the
        // median of the counts it heard (`swarm_size`), and while joining it told none (see
        // `heartbeat`). Counts told while still climbing had peers of the groups test draw
        // different groups at round 0 and refuse each other's updates.
        self.heartbeat();
        let params = self.trainer.parameters_async().await?;
        self.mark(params);
        while !self.stopped && self.config.rounds.is_none_or(|r| self.book.round() < r) {
            self.resync_if_far_behind().await?;
            // A state fetched near the end may close the run: no round is left to run (a slow
            // peer that resynced there ran a round past the run's end). The fetch closed the
            // rounds up to the last, reported as one caught-up round, the last, so that whoever
            // watches the rounds sees this peer finish.
            if let Some(r) = self.config.rounds.filter(|&r| self.book.round() >= r) {
                if self.summary.rounds.last().is_none_or(|l| l.round + 1 < r) {
                    let last = RoundReport {
                        round: r - 1,
                        loss: f32::NAN,
                        catch_up: true,
                        ..Default::default()
                    };
                    self.finish_report(last).await?;
                }
                break;
            }
            self.run_round().await?;
            if self.stop.next().now_or_never().flatten().is_some() {
                self.stopped = true;
            }
        }
        if !self.stopped {
            self.linger().await?;
        }
        self.checkpoint().await;
        self.summary.drops = self.drops.clone();
        self.summary.credit = self.own_credit();
        self.summary.credits = self.credits();
        self.summary.final_params = self.trainer.parameters_async().await?;
        // A joiner asking after our last round still gets our state while the network lives.
        self.snapshots.set_round(self.book.round());
        let state = self.snapshot().await?;
        self.snapshots.publish(&state);
        Ok(self.summary.clone())
    }
}
