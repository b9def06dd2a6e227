//! The adversity benchmark (`swarm-harness adversity`, bench/adversity/): one scenario run with
//! every peer honest, then once per attack kind with a quarter of its peers attacking. Each
//! attacked report's summary says what the attack cost the honest peers: `samples_vs_honest`,
//! their samples to the target over those of the all-honest run.

use anyhow::Result;

use crate::attack::Attack;
use crate::report::Report;
use crate::scenario::{PeerSpec, Scenario};

/// The peers that attack in a swarm of `peers`: the last quarter, at least one.
pub fn attackers(peers: usize) -> Vec<usize> {
    let n = (peers / 4).max(1).min(peers);
    (peers - n..peers).collect()
}

/// `scenario` with the peers `attackers` making `attack`, every other peer honest, and a name of
/// its own (the run id, so that runs one after another never hear each other).
pub fn with_attack(scenario: &Scenario, attack: Option<Attack>, attackers: &[usize]) -> Scenario {
    let mut s = scenario.clone();
    for p in &mut s.peer {
        p.attack = None;
    }
    if let Some(kind) = attack {
        for &index in attackers {
            match s.peer.iter_mut().find(|p| p.index == index) {
                Some(p) => p.attack = Some(kind),
                None => s.peer.push(PeerSpec {
                    index,
                    slowdown: 1.0,
                    join_at_round: None,
                    kill_at_round: None,
                    restart_at_round: None,
                    duty_cycle: 1.0,
                    pause_at_round: None,
                    resume_at_round: None,
                    attack: Some(kind),
                    link: None,
                }),
            }
        }
    }
    s.name = format!("{}-{}", scenario.name, label(attack));
    s
}

/// The name of a run's attack in file names and tables: the kind, or `honest`.
pub fn label(attack: Option<Attack>) -> String {
    match attack {
        // The serde name (snake_case), as a scenario spells it.
        Some(kind) => serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{kind:?}")),
        None => "honest".into(),
    }
}

/// Fills `report`'s comparison with the all-honest run of the same scenario.
pub fn compare(report: &mut Report, honest: &Report) {
    let s = &mut report.summary;
    s.honest_samples_to_target = honest.summary.samples_to_target;
    s.samples_vs_honest = s
        .samples_to_target
        .zip(s.honest_samples_to_target)
        .map(|(a, b)| a as f64 / b.max(1) as f64);
    s.rounds_vs_honest = s
        .rounds_to_target
        .zip(honest.summary.rounds_to_target)
        .map(|(a, b)| a as f64 / b.max(1) as f64);
    s.rss_vs_honest = s
        .max_honest_rss_bytes
        .zip(honest.summary.max_honest_rss_bytes)
        .map(|(a, b)| a as f64 / b.max(1) as f64);
}

/// Runs `scenario` all-honest, then once per kind in `kinds` with [`attackers`] attacking;
/// `done` gets each report as it is finished (the honest one first) and `log` the progress.
pub fn run(
    scenario: &Scenario,
    kinds: &[Attack],
    mut done: impl FnMut(Option<Attack>, &Report) -> Result<()>,
    mut log: impl FnMut(&str),
) -> Result<()> {
    let who = attackers(scenario.peers);
    let mut base = scenario.clone();
    // The honest run is the comparison; a dense baseline would only cost time.
    base.baseline = false;
    log(&format!("honest run: {} peers", base.peers));
    let honest = crate::run::run(&with_attack(&base, None, &who), &mut log)?;
    done(None, &honest)?;
    for &kind in kinds {
        log(&format!("{}: peers {who:?} attack", label(Some(kind))));
        let mut report = crate::run::run(&with_attack(&base, Some(kind), &who), &mut log)?;
        compare(&mut report, &honest);
        done(Some(kind), &report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_peers_attack_and_the_rest_stay_honest() {
        assert_eq!(attackers(8), vec![6, 7]);
        assert_eq!(attackers(4), vec![3]);
        assert_eq!(attackers(2), vec![1]);
        let s: Scenario = toml::from_str(
            "name = \"a\"\npeers = 8\nrounds = 2\nmode = \"gradient\"\ntarget_val_loss = 3.0\n\
             [[peer]]\nindex = 7\nslowdown = 2.0\n\
             [[peer]]\nindex = 1\nattack = \"zero\"\n",
        )
        .expect("scenario");
        s.validate().expect("valid");
        let attacked = with_attack(&s, Some(Attack::Flood), &attackers(8));
        assert_eq!(attacked.name, "a-flood");
        let kind = |i: usize| attacked.spec(i).and_then(|p| p.attack);
        assert_eq!(
            (kind(1), kind(6), kind(7)),
            (None, Some(Attack::Flood), Some(Attack::Flood))
        );
        // What else a peer had (here a slowdown) is kept.
        assert_eq!(attacked.spec(7).map(|p| p.slowdown), Some(2.0));
        let honest = with_attack(&s, None, &attackers(8));
        assert!(honest.peer.iter().all(|p| p.attack.is_none()));
        assert_eq!(honest.name, "a-honest");
    }

    /// Every committed report in bench/adversity/ ran bench/adversity/scenario.toml as it
    /// stands, with its file's attack: the folder reproduces what it shows.
    #[test]
    fn the_committed_adversity_reports_ran_the_committed_scenario() {
        let dir = crate::manifest_dir().join("../bench/adversity");
        let mut base = Scenario::load(&dir.join("scenario.toml")).expect("scenario");
        base.baseline = false;
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("bench/adversity") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
            let attack: Option<Attack> = (stem != "honest").then(|| {
                serde_json::from_value(serde_json::Value::String(stem.into())).expect("a kind")
            });
            let text = std::fs::read_to_string(&path).expect("report");
            let report: serde_json::Value = serde_json::from_str(&text).expect("json");
            let ran: Scenario =
                serde_json::from_value(report["scenario"].clone()).expect("its scenario");
            let expected = with_attack(&base, attack, &attackers(base.peers));
            assert_eq!(ran, expected, "{} is not what it ran", path.display());
            checked += 1;
        }
        assert!(checked >= 2, "only {checked} reports in {}", dir.display());
    }
}
