//! PHQ-9 trends against the patient's baseline: reliable deterioration, response, remission.
//!
//! Baseline is the patient's first PHQ-9 (earliest by time), or with [`phq9_trend_since`] the
//! first one in the current plan period. The first score is what the patient arrived with, so
//! later change is read against where treatment started, not against last week's fluctuation.

use serde::{Deserialize, Serialize};

/// Rise over baseline, in PHQ-9 points, that counts as reliable deterioration.
// DESIGN.md clinical facts: a rise of 5 or more points is reliable deterioration. (IAPT's
// Jacobson-Truax criterion for PHQ-9 is 6; DESIGN's 5 flags a worsening patient sooner.)
pub const RELIABLE_DETERIORATION_POINTS: i16 = 5;

/// A latest total below this is remission.
// DESIGN.md clinical facts: remission = PHQ-9 total < 5 (the "minimal" band, Kroenke 2001).
pub const REMISSION_BELOW: u8 = 5;

/// One PHQ-9 total at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Observation<T> {
    /// When the PHQ-9 was completed (any ordered time: unix seconds, a timestamp type).
    pub at: T,
    /// The total, 0-27.
    pub total: u8,
}

/// Where a patient's PHQ-9 stands against their baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trend<T> {
    /// The score change is measured against: the earliest observation.
    pub baseline: Observation<T>,
    /// The most recent observation.
    pub latest: Observation<T>,
    /// Latest minus baseline total; positive is worse.
    pub change_from_baseline: i16,
    /// Latest is 5 or more points above baseline.
    pub reliable_deterioration: bool,
    /// Latest is at most half of a baseline above 0.
    pub response: bool,
    /// Latest total is below 5.
    pub remission: bool,
    /// How many observations the trend was computed from.
    pub observations: usize,
}

/// The trend over all PHQ-9 totals given as (time, total); `None` when there are none.
///
/// Input is expected in time order, but does not need to be: baseline is the earliest time
/// and latest the most recent. On a tie the first given is the baseline and the last given
/// the latest.
#[must_use]
pub fn phq9_trend<T: Ord + Clone>(scores: &[(T, u8)]) -> Option<Trend<T>> {
    // min_by_key keeps the first of equal minima; max_by_key keeps the last of equal maxima.
    let (baseline_at, baseline_total) = scores.iter().min_by_key(|(at, _)| at)?;
    let (latest_at, latest_total) = scores.iter().max_by_key(|(at, _)| at)?;
    let baseline = Observation { at: baseline_at.clone(), total: *baseline_total };
    let latest = Observation { at: latest_at.clone(), total: *latest_total };
    let change_from_baseline = i16::from(latest.total) - i16::from(baseline.total);
    // DESIGN.md clinical facts: response = a drop of 50% or more from baseline; a baseline of
    // 0 has nowhere to drop to, so it never responds.
    let response = baseline.total > 0 && u16::from(latest.total) * 2 <= u16::from(baseline.total);
    Some(Trend {
        change_from_baseline,
        reliable_deterioration: change_from_baseline >= RELIABLE_DETERIORATION_POINTS,
        response,
        remission: latest.total < REMISSION_BELOW,
        observations: scores.len(),
        baseline,
        latest,
    })
}

/// The trend over the totals at or after `period_start` (e.g. the current care plan's start),
/// so baseline is the first score of the period; `None` when the period has none.
#[must_use]
pub fn phq9_trend_since<T: Ord + Clone>(scores: &[(T, u8)], period_start: &T) -> Option<Trend<T>> {
    let in_period: Vec<(T, u8)> = scores.iter().filter(|(at, _)| at >= period_start).cloned().collect();
    phq9_trend(&in_period)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn no_scores_no_trend() {
        assert_eq!(phq9_trend::<i64>(&[]), None);
    }

    #[test]
    fn a_single_score_is_its_own_baseline() {
        let trend = phq9_trend(&[(0, 12)]);
        assert_eq!(trend.map(|t| (t.change_from_baseline, t.response, t.remission)), Some((0, false, false)));
    }

    #[test]
    fn rise_of_five_is_reliable_deterioration_four_is_not() {
        let five = phq9_trend(&[(0, 8), (14 * DAY, 10), (28 * DAY, 13)]);
        assert_eq!(five.map(|t| (t.change_from_baseline, t.reliable_deterioration)), Some((5, true)));
        let four = phq9_trend(&[(0, 8), (28 * DAY, 12)]);
        assert_eq!(four.map(|t| (t.change_from_baseline, t.reliable_deterioration)), Some((4, false)));
    }

    #[test]
    fn deterioration_is_against_baseline_not_the_previous_score() {
        // Up 5 from the last score but only 2 from where treatment started.
        let trend = phq9_trend(&[(0, 10), (7 * DAY, 7), (14 * DAY, 12)]);
        assert_eq!(trend.map(|t| (t.change_from_baseline, t.reliable_deterioration)), Some((2, false)));
    }

    #[test]
    fn half_of_baseline_is_response() {
        let halved = phq9_trend(&[(0, 18), (56 * DAY, 9)]);
        assert_eq!(halved.map(|t| (t.response, t.remission, t.change_from_baseline)), Some((true, false, -9)));
        let not_quite = phq9_trend(&[(0, 18), (56 * DAY, 10)]);
        assert_eq!(not_quite.map(|t| t.response), Some(false));
        let odd_baseline = phq9_trend(&[(0, 15), (56 * DAY, 7)]);
        assert_eq!(odd_baseline.map(|t| t.response), Some(true), "7 is 47% of 15");
    }

    #[test]
    fn zero_baseline_never_responds() {
        let trend = phq9_trend(&[(0, 0), (DAY, 0)]);
        assert_eq!(trend.map(|t| (t.response, t.remission)), Some((false, true)));
    }

    #[test]
    fn remission_is_latest_below_five() {
        assert_eq!(phq9_trend(&[(0, 20), (DAY, 4)]).map(|t| t.remission), Some(true));
        assert_eq!(phq9_trend(&[(0, 20), (DAY, 5)]).map(|t| t.remission), Some(false));
    }

    #[test]
    fn out_of_order_input_still_uses_earliest_and_latest() {
        let trend = phq9_trend(&[(14 * DAY, 16), (0, 9), (7 * DAY, 11)]);
        assert_eq!(
            trend.map(|t| (t.baseline, t.latest, t.observations)),
            Some((Observation { at: 0, total: 9 }, Observation { at: 14 * DAY, total: 16 }, 3))
        );
    }

    #[test]
    fn plan_period_baseline_is_its_first_score() {
        let scores = [(0, 22), (30 * DAY, 12), (60 * DAY, 17)];
        let whole = phq9_trend(&scores);
        assert_eq!(whole.map(|t| (t.baseline.total, t.reliable_deterioration)), Some((22, false)));
        let since_new_plan = phq9_trend_since(&scores, &(30 * DAY));
        assert_eq!(
            since_new_plan.map(|t| (t.baseline.total, t.change_from_baseline, t.reliable_deterioration)),
            Some((12, 5, true))
        );
        assert_eq!(phq9_trend_since(&scores, &(61 * DAY)), None);
    }
}
