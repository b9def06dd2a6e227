//! Round trips and hostile inputs of every wire message.

use super::*;
use crate::codec::CodecDescriptor;
use crate::credit::{Attestation, MAX_ATTESTATIONS};
use crate::drift::DriftSketch;
use crate::standing::SKETCH_DIM;

fn sample() -> Update {
    Update {
        run_id: "shakespeare-1".into(),
        model_hash: [7; 32],
        peer_id: vec![1, 2, 3],
        round: 12,
        base_round: 11,
        samples: 4096,
        codec: CodecDescriptor::top_k_int8_zstd(10_000),
        payload: vec![9, 8, 7],
    }
}

#[test]
fn round_trips_with_version_first() {
    let limits = WireLimits::for_model(1000, 1 << 20);
    let bytes = sample().to_bytes();
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(Update::from_bytes(&bytes, &limits), Ok(sample()));
}

#[test]
fn rejects_bad_headers() {
    let limits = WireLimits::for_model(1000, 1 << 20);
    let mut bytes = sample().to_bytes();
    bytes[0] = 2;
    assert_eq!(
        Update::from_bytes(&bytes, &limits),
        Err(DecodeError::UnsupportedVersion(2))
    );
    assert_eq!(Update::from_bytes(&[], &limits), Err(DecodeError::Empty));
    let mut u = sample();
    u.base_round = 13;
    assert!(matches!(
        Update::from_bytes(&u.to_bytes(), &limits),
        Err(DecodeError::BadHeader(_))
    ));
    let mut u = sample();
    u.samples = (1 << 20) + 1;
    assert!(matches!(
        Update::from_bytes(&u.to_bytes(), &limits),
        Err(DecodeError::Overclaimed { .. })
    ));
    let mut u = sample();
    u.run_id = "x".repeat(65);
    assert!(matches!(
        Update::from_bytes(&u.to_bytes(), &limits),
        Err(DecodeError::FieldTooLong { .. })
    ));
    let mut big = sample().to_bytes();
    big.resize(limits.max_message_bytes + 1, 0);
    assert!(matches!(
        Update::from_bytes(&big, &limits),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut trailing = sample().to_bytes();
    trailing.push(0);
    assert_eq!(
        Update::from_bytes(&trailing, &limits),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn announcements_round_trip_match_only_their_update_and_stay_small() {
    let limits = WireLimits::for_model(1000, 1 << 20);
    let update = sample();
    let bytes = update.to_bytes();
    let announce = Announce::of(&update, &bytes);
    assert!(announce.matches(&update, &bytes));
    let message = UpdateGossip::Announce(announce.clone());
    let wire = message.to_bytes();
    assert!(wire.len() < MAX_ANNOUNCE_BYTES, "{} bytes", wire.len());
    assert_eq!(UpdateGossip::from_bytes(&wire, &limits), Ok(message));
    let inline = UpdateGossip::Inline(update.clone());
    assert_eq!(
        UpdateGossip::from_bytes(&inline.to_bytes(), &limits),
        Ok(inline)
    );

    // Another payload, another header, or a cut-off copy is not what was announced.
    let mut other = update.clone();
    other.payload[0] ^= 1;
    assert!(!announce.matches(&other, &other.to_bytes()));
    let mut later = update.clone();
    later.round += 1;
    assert!(!announce.matches(&later, &bytes));
    assert!(!announce.matches(&update, &bytes[..bytes.len() - 1]));

    // Lying headers are refused before anything is pulled.
    for bad in [
        Announce {
            bytes: limits.max_message_bytes as u64 + 1,
            ..announce.clone()
        },
        Announce {
            bytes: 0,
            ..announce.clone()
        },
        Announce {
            base_round: announce.round + 1,
            ..announce.clone()
        },
        Announce {
            samples: 0,
            ..announce.clone()
        },
    ] {
        let wire = UpdateGossip::Announce(bad).to_bytes();
        assert!(UpdateGossip::from_bytes(&wire, &limits).is_err());
    }
    // An "announcement" padded past the announcement limit is refused whole.
    let padded = UpdateGossip::Announce(Announce {
        run_id: "r".repeat(64),
        peer_id: vec![1; 64],
        ..announce
    });
    let mut wire = padded.to_bytes();
    assert!(UpdateGossip::from_bytes(&wire, &limits).is_ok());
    wire.resize(MAX_ANNOUNCE_BYTES + 1, 0);
    assert!(UpdateGossip::from_bytes(&wire, &limits).is_err());
}

#[test]
fn heartbeats_and_states_round_trip_and_reject_lies() {
    let hb = Heartbeat {
        run_id: "r".into(),
        model_hash: [1; 32],
        peer_id: vec![4; 38],
        round: 7,
        checksum: params_checksum(&[1.0, 2.0]),
        loss: 2.5,
        val_loss: 2.7,
        sketch: DriftSketch::of(&[1.0, 2.0]),
        applied: 3,
        sealed: Some(Fingerprint {
            round: 3,
            checksum: 9,
            sketch: DriftSketch::of(&[1.0, 1.5]),
            applied: 2,
        }),
        published: 0b101,
        settled: false,
        samples: 64,
        tokens_per_s: 1000.0,
        agent: "gradswarm/0.1.0 desktop cpu".into(),
        throttled: false,
        heard: 0,
        bytes_sent: 1 << 20,
        bytes_received: 3 << 20,
        attests: vec![Attestation {
            peer: [5; 8],
            samples: 640,
        }],
    };
    assert_eq!(Heartbeat::from_bytes(&hb.to_bytes()), Ok(hb.clone()));
    assert!(Heartbeat::from_bytes(&[FORMAT_VERSION; 600]).is_err());
    // The largest honest heartbeat fits its limit; a sketch with a NaN is refused.
    let largest = Heartbeat {
        run_id: "r".repeat(MAX_RUN_ID_LEN),
        peer_id: vec![0xff; MAX_PEER_ID_LEN],
        round: u64::MAX,
        checksum: u64::MAX,
        sketch: DriftSketch::of(&vec![1e30; 10_000]),
        applied: u64::MAX,
        sealed: Some(Fingerprint {
            round: u64::MAX,
            checksum: u64::MAX,
            sketch: DriftSketch::of(&vec![1e30; 10_000]),
            applied: u64::MAX,
        }),
        published: u64::MAX,
        settled: true,
        samples: u64::MAX,
        tokens_per_s: f32::MAX,
        agent: "a".repeat(MAX_AGENT_LEN),
        throttled: true,
        heard: u32::MAX,
        bytes_sent: u64::MAX,
        bytes_received: u64::MAX,
        attests: vec![
            Attestation {
                peer: [0xff; 8],
                samples: u64::MAX,
            };
            MAX_ATTESTATIONS
        ],
        ..hb.clone()
    };
    assert!(largest.to_bytes().len() <= MAX_HEARTBEAT_BYTES);
    assert!(Heartbeat::from_bytes(&largest.to_bytes()).is_ok());
    let mut nan = hb.clone();
    nan.sketch.buckets[0] = f32::NAN;
    assert!(Heartbeat::from_bytes(&nan.to_bytes()).is_err());
    let mut nan = hb.clone();
    if let Some(sealed) = nan.sealed.as_mut() {
        sealed.sketch.buckets[1] = f32::INFINITY;
    }
    assert!(Heartbeat::from_bytes(&nan.to_bytes()).is_err());
    // A throughput that is no number, an agent too long or with control characters: refused.
    for lie in [
        Heartbeat {
            tokens_per_s: f32::NAN,
            ..hb.clone()
        },
        Heartbeat {
            tokens_per_s: -1.0,
            ..hb.clone()
        },
        Heartbeat {
            agent: "a".repeat(MAX_AGENT_LEN + 1),
            ..hb.clone()
        },
        Heartbeat {
            agent: "gradswarm\x1b[2J".into(),
            ..hb.clone()
        },
        Heartbeat {
            attests: vec![hb.attests[0].clone(); MAX_ATTESTATIONS + 1],
            ..hb
        },
    ] {
        assert!(Heartbeat::from_bytes(&lie.to_bytes()).is_err(), "{lie:?}");
    }
    assert_ne!(params_checksum(&[1.0, 2.0]), params_checksum(&[1.0, 2.5]));

    let state = PeerState {
        round: 3,
        step: 9,
        params: vec![0.5; 10],
        optimizer: vec![("m".into(), vec![0.1; 10])],
        optimizer_steps: 9,
        standing: vec![(1, vec![(vec![7; 38], vec![0.25; SKETCH_DIM])])],
        recent: vec![RecentRound {
            round: 2,
            updates: vec![sample()],
            equivocators: vec![vec![3; 38]],
        }],
    };
    assert_eq!(
        PeerState::from_bytes(&state.to_bytes(), 10),
        Ok(state.clone())
    );
    assert!(PeerState::from_bytes(&state.to_bytes(), 11).is_err());
    let mut nan = state.clone();
    nan.params[3] = f32::NAN;
    assert!(PeerState::from_bytes(&nan.to_bytes(), 10).is_err());
    let mut long = state.clone();
    long.optimizer[0].1 = vec![0.0; 11];
    assert!(PeerState::from_bytes(&long.to_bytes(), 10).is_err());
    // A standing sketch of another size, or with an ∞, or too many rounds of it: refused.
    let mut short = state.clone();
    short.standing[0].1[0].1.pop();
    assert!(PeerState::from_bytes(&short.to_bytes(), 10).is_err());
    let mut inf = state.clone();
    inf.standing[0].1[0].1[5] = f32::INFINITY;
    assert!(PeerState::from_bytes(&inf.to_bytes(), 10).is_err());
    // Too many recent rounds, or an update with an overlong id: refused.
    let mut rounds = state.clone();
    rounds.recent = (0..=MAX_STATE_RECENT_ROUNDS as u64)
        .map(|round| RecentRound {
            round,
            ..Default::default()
        })
        .collect();
    assert!(PeerState::from_bytes(&rounds.to_bytes(), 10).is_err());
    let mut id = state.clone();
    id.recent[0].updates[0].peer_id = vec![1; 1000];
    assert!(PeerState::from_bytes(&id.to_bytes(), 10).is_err());
    let mut equivocator = state.clone();
    equivocator.recent[0].equivocators[0] = vec![1; 1000];
    assert!(PeerState::from_bytes(&equivocator.to_bytes(), 10).is_err());
    let mut many = state;
    many.standing = (0..=MAX_STATE_STANDING_ROUNDS as u64)
        .map(|r| (r, Vec::new()))
        .collect();
    assert!(PeerState::from_bytes(&many.to_bytes(), 10).is_err());
    let bytes = PeerState::default().to_bytes();
    assert!(PeerState::from_bytes(&bytes[..bytes.len() - 1], 0).is_err());
}

#[test]
fn an_update_in_another_codec_than_the_runs_is_refused() {
    let run = CodecDescriptor::top_k_int8_zstd(10_000);
    let limits = WireLimits::for_model(1000, 1 << 20).with_codec(run);
    assert!(Update::from_bytes(&sample().to_bytes(), &limits).is_ok());
    let mut dense = sample();
    dense.codec = CodecDescriptor::DENSE_F32;
    assert_eq!(
        Update::from_bytes(&dense.to_bytes(), &limits),
        Err(DecodeError::BadCodec("not the run's codec"))
    );
    // Without a run codec (a bootstrap node), any valid descriptor passes.
    let open = WireLimits::for_model(1000, 1 << 20);
    assert!(Update::from_bytes(&dense.to_bytes(), &open).is_ok());
}
