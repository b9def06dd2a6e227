//! Updates made to defeat the screens, to measure them with: the harness's attacker peers and the
//! simulator send these. No peer uses them.

use crate::DecodedUpdate;
use crate::codec::topk;

/// The update an omniscient liar sends against a round whose honest updates are `theirs`
/// (vectors of `len`), to be judged beside `others` updates in all: the negated sum of those of
/// `theirs` that point most along their sum, as many as the direction screen lets one update
/// oppose (`others / 2`), on coordinates the rest of `theirs` do not touch (so that they cast no
/// vote); its `k` largest entries, at `scale` times the largest of their norms (at or above the
/// norm screen's clip, which brings it down to exactly that). `None` with fewer than two.
pub fn crafted(
    theirs: &[&DecodedUpdate],
    others: usize,
    len: usize,
    k: usize,
    scale: f64,
) -> Option<Vec<f32>> {
    if theirs.len() < 2 {
        return None;
    }
    let dense: Vec<Vec<f32>> = theirs.iter().map(|u| u.to_dense()).collect();
    let mut sum = vec![0.0f32; len];
    for d in theirs {
        d.add_to(1.0, &mut sum);
    }
    let mut order: Vec<(f64, usize)> = dense
        .iter()
        .enumerate()
        .map(|(i, d)| (dot(d, &sum), i))
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let opposed = (others / 2).min(theirs.len());
    let mut crafted = vec![0.0f32; len];
    for &(_, i) in &order[..opposed] {
        theirs[i].add_to(-1.0, &mut crafted);
    }
    for &(_, i) in &order[opposed..] {
        for (c, v) in crafted.iter_mut().zip(&dense[i]) {
            if *v != 0.0 {
                *c = 0.0;
            }
        }
    }
    let mut sparse = vec![0.0f32; len];
    for i in topk::select(&crafted, k) {
        sparse[i as usize] = crafted[i as usize];
    }
    let largest = dense.iter().map(|d| norm(d)).fold(0.0, f64::max);
    let factor = (scale * largest / norm(&sparse).max(1e-30)) as f32;
    sparse.iter_mut().for_each(|v| *v *= factor);
    Some(sparse)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::screen::tests::accepted;
    use crate::synthetic::{SplitMix, sparse_around};
    use crate::{DirectionScreen, DropReason, NormScreen, screen_round};

    #[test]
    fn a_crafted_update_passes_both_screens_and_opposes_the_honest_sum() {
        // Six honest sparse updates sharing a direction, and the crafted one beside them: the
        // screens keep all seven, and the crafted one points against the honest sum.
        let len = 4096;
        let mut rng = SplitMix::new(3);
        let shared: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
        let honest: Vec<DecodedUpdate> = (0..6)
            .map(|_| sparse_around(&mut rng, &shared, len / 20, 0.5))
            .collect();
        let theirs: Vec<&DecodedUpdate> = honest.iter().collect();
        let lie = crafted(&theirs, 6, len, len / 20, 2.0).expect("six heard");
        let sum: Vec<f32> = (0..len)
            .map(|i| honest.iter().map(|u| u.to_dense()[i]).sum())
            .collect();
        assert!(dot(&lie, &sum) < 0.0, "it opposes the honest sum");
        let indices: Vec<u32> = (0..len as u32)
            .filter(|&i| lie[i as usize] != 0.0)
            .collect();
        let values = indices.iter().map(|&i| lie[i as usize]).collect();
        let mut round: Vec<DecodedUpdate> = honest.clone();
        round.push(DecodedUpdate {
            len,
            indices: Some(indices),
            values,
        });
        let accepted: Vec<_> = round.into_iter().enumerate().map(accepted).collect();
        let screened = screen_round(
            &accepted,
            len,
            &NormScreen::default(),
            Some(&DirectionScreen::default()),
        );
        let unaligned = screened
            .dropped
            .iter()
            .filter(|d| d.1 == DropReason::Unaligned)
            .count();
        assert_eq!(unaligned, 0, "{:?}", screened.dropped);
        assert_eq!(screened.kept.len(), 7);
    }
}
