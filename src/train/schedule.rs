//! How a distillation's temperature τ and CE weight α move over a run: fixed, scheduled
//! (linear in the steps) or adapted to the loss (a pure function of the step logs, so a resumed
//! run adapts exactly as the uninterrupted one).

use super::StepLog;
use crate::error::{PupilError, Result};
use crate::ops::distill_loss::DistillLoss;

/// How τ and α move over a run: linearly from the loss as given (at step 1) to these values
/// (at the last step); `None` keeps one fixed. Annealing τ from high (the teacher's dark
/// knowledge, smooth gradients) to 1 (the distribution the student is used at) is the common
/// use. The divergence weight follows τ² (it is scaled by (τ_t / τ_1)², so Hinton's τ² stays
/// τ²). The held-out KL before and after a run is measured with [`eval_loss`](Self::eval_loss).
///
/// `adapt_alpha` adapts α to the loss instead (no `alpha_end` then): the hard-label term keeps
/// the share of the loss it had at step 1, `s = α₁·CE₁ / (w₁·D₁ + α₁·CE₁)` (w: the divergence
/// weight, D: the divergence), so each later step takes `α = s/(1−s) · EMA(w·D) / EMA(CE)` over
/// the steps before it (EMA factor [`ADAPT_EMA`], seeded with step 1; α kept within
/// [`ADAPT_RANGE`]× of α₁ either way). As the student closes in on the teacher the divergence
/// falls faster than the labels' CE, and α falls with it: the labels cannot take over the
/// gradient late in a run (where a fixed α lets them pull the student off the teacher), and a
/// divergence that stalls keeps them from fading. α₁ is the user's α; the held-out figures
/// before and after use it too, so they compare.
///
/// `adapt_tau` moves τ with the student's progress instead of the step count: from τ₁ toward
/// its target `tau_end` (1 when not given) in proportion to how far the divergence has fallen,
/// `τ = τ_end + (τ₁ − τ_end) · min(1, EMA(D) / D₁)` (same EMA). A student far from its teacher
/// learns from the smooth, high-temperature targets; once it has caught up on them the
/// targets sharpen toward the distribution it is used at, at the pace it learns rather than
/// on a fixed clock (a divergence that stalls holds τ; one that climbs back raises it). The
/// held-out figures use the target τ. Both adaptations read only the logged steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KdSchedule {
    pub tau_end: Option<f32>,
    pub alpha_end: Option<f32>,
    pub adapt_alpha: bool,
    pub adapt_tau: bool,
}

/// The EMA factor of the adapted schedules' loss averages (the last ~5 steps count).
pub const ADAPT_EMA: f64 = 0.8;
/// How far `KdSchedule::adapt_alpha` may move α from α₁: within [α₁/100, 100·α₁].
pub const ADAPT_RANGE: f64 = 100.0;
/// The τ an adapted τ heads for when no `tau_end` is given.
pub const ADAPT_TAU_TARGET: f32 = 1.0;

/// The running averages the adapted schedules read, folded over the logged steps in order.
#[derive(Default)]
struct Averages {
    /// (D₁, EMA(D)): the divergence at step 1 and its average since.
    divergence: Option<(f64, f64)>,
    /// (the labels' share at step 1, EMA(w·D), EMA(CE)).
    share: Option<(f64, f64, f64)>,
}

impl Averages {
    fn add(&mut self, base: &DistillLoss, trained: &DistillLoss, log: &StepLog) {
        let ema = |avg: f64, x: f64| ADAPT_EMA * avg + (1.0 - ADAPT_EMA) * x;
        let Some(d) = log.kl.filter(|d| d.is_finite() && *d >= 0.0) else { return };
        self.divergence = Some(match self.divergence {
            None => (d, d),
            Some((d1, avg)) => (d1, ema(avg, d)),
        });
        let Some(c) = log.ce.filter(|c| c.is_finite() && *c > 0.0) else { return };
        let wd = trained.kl_coef as f64 * d;
        self.share = Some(match self.share {
            None => (base.alpha as f64 * c / (wd + base.alpha as f64 * c), wd, c),
            Some((s, awd, ac)) => (s, ema(awd, wd), ema(ac, c)),
        });
    }
}

impl KdSchedule {
    /// The loss of step `step` (1-based) of `steps` on the linear schedule (τ stays τ₁ here when
    /// it is adapted).
    pub fn at(&self, base: &DistillLoss, step: usize, steps: usize) -> DistillLoss {
        let progress = if steps <= 1 { 0.0 } else { (step.clamp(1, steps) - 1) as f32 / (steps - 1) as f32 };
        let lerp = |from: f32, to: Option<f32>| to.map_or(from, |to| from + (to - from) * progress);
        let tau = if self.adapt_tau { base.tau } else { lerp(base.tau, self.tau_end) };
        DistillLoss { alpha: lerp(base.alpha, self.alpha_end), ..with_tau(base, tau) }
    }

    /// The loss the held-out figures before and after a run of `steps` are measured with: the
    /// last step's on a schedule; α₁ when α adapts; the target τ when τ adapts.
    pub fn eval_loss(&self, base: &DistillLoss, steps: usize) -> DistillLoss {
        let mut loss = self.at(base, steps, steps);
        if self.adapt_tau {
            loss = DistillLoss { alpha: loss.alpha, ..with_tau(base, self.tau_target()) };
        }
        loss
    }

    /// The loss of step `step` of `steps` after the steps `logged` before it: [`at`](Self::at),
    /// with α and/or τ adapted to their losses when asked.
    pub fn next(&self, base: &DistillLoss, logged: &[StepLog], step: usize, steps: usize) -> DistillLoss {
        let mut avg = Averages::default();
        for log in logged {
            // Each logged step as it was trained: its τ from the steps before it.
            let trained = self.loss_after(base, &avg, log.step, steps);
            avg.add(base, &trained, log);
        }
        self.loss_after(base, &avg, step, steps)
    }

    fn loss_after(&self, base: &DistillLoss, avg: &Averages, step: usize, steps: usize) -> DistillLoss {
        let mut loss = self.at(base, step, steps);
        if self.adapt_tau {
            if let Some((d1, d)) = avg.divergence.filter(|(d1, _)| *d1 > 0.0) {
                let target = self.tau_target();
                let tau = target + (base.tau - target) * (d / d1).min(1.0) as f32;
                loss = DistillLoss { alpha: loss.alpha, ..with_tau(base, tau) };
            }
        }
        if self.adapt_alpha {
            loss.alpha = match avg.share {
                Some((s, d, c)) if s > 0.0 && s < 1.0 => {
                    let a1 = base.alpha as f64;
                    (s / (1.0 - s) * d / c).clamp(a1 / ADAPT_RANGE, a1 * ADAPT_RANGE) as f32
                }
                _ => base.alpha,
            };
        }
        loss
    }

    fn tau_target(&self) -> f32 {
        self.tau_end.unwrap_or(ADAPT_TAU_TARGET)
    }

    pub(super) fn check(&self, base: Option<&DistillLoss>) -> Result<()> {
        let tau_ok = self.tau_end.is_none_or(|t| t.is_finite() && t > 0.0);
        let alpha_ok = self.alpha_end.is_none_or(|a| a.is_finite() && a >= 0.0);
        if !(tau_ok && alpha_ok) {
            return Err(PupilError::arg("distill", format!("a final τ > 0 and a final α ≥ 0; got {self:?}")));
        }
        if self.adapt_alpha && self.alpha_end.is_some() {
            return Err(PupilError::arg(
                "distill",
                "α is either scheduled (a final α) or adapted to the loss, not both",
            ));
        }
        if self.adapt_alpha && base.is_some_and(|b| b.alpha <= 0.0) {
            return Err(PupilError::arg("distill", "adapting α to the loss needs an α > 0 to start from"));
        }
        if self.adapt_tau && base.is_some_and(|b| b.tau == self.tau_target()) {
            return Err(PupilError::arg(
                "distill",
                format!("adapting τ needs a τ to move from: τ is already its target {}", self.tau_target()),
            ));
        }
        Ok(())
    }
}

/// `base` at temperature `tau`, its divergence weight scaled by (τ / τ₁)².
fn with_tau(base: &DistillLoss, tau: f32) -> DistillLoss {
    DistillLoss { tau, kl_coef: base.kl_coef * (tau / base.tau).powi(2), ..*base }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::distill_loss::Divergence;

    #[test]
    fn kd_schedule_interpolates_tau_alpha_and_the_kl_weight() {
        let base = DistillLoss { divergence: Divergence::Jsd { beta: 0.3 }, ..DistillLoss::hinton(4.0, 0.5) };
        let s = KdSchedule { tau_end: Some(1.0), alpha_end: Some(0.0), ..KdSchedule::default() };
        assert_eq!(s.at(&base, 1, 7), base);
        let last = s.at(&base, 7, 7);
        assert_eq!((last.tau, last.alpha, last.divergence), (1.0, 0.0, base.divergence));
        assert!((last.kl_coef - 1.0).abs() < 1e-6, "{last:?}");
        assert_eq!(s.eval_loss(&base, 7), last);
        let mid = s.at(&base, 4, 7);
        assert_eq!((mid.tau, mid.alpha), (2.5, 0.25));
        assert!((mid.kl_coef - 6.25).abs() < 1e-5, "{mid:?}");
        assert_eq!(KdSchedule::default().at(&base, 5, 7), base, "no schedule: fixed");
        assert_eq!(s.at(&base, 1, 1), base, "a one-step run uses the loss as given");
        let bad = |tau_end, alpha_end| KdSchedule { tau_end, alpha_end, ..KdSchedule::default() }.check(Some(&base));
        assert!(bad(Some(0.0), None).is_err() && bad(None, Some(f32::NAN)).is_err());
    }

    /// A logged distillation step with divergence `kl` and CE `ce`.
    fn logged(step: usize, kl: f64, ce: f64) -> StepLog {
        let (loss, grad_norm, lr, tokens, applied) = (kl + ce, 1.0, 1e-3, 8, true);
        let (kl, ce) = (Some(kl), Some(ce));
        StepLog { step, steps: 10, loss, grad_norm, lr, tokens, applied, kl, ce, alpha: None, tau: None }
    }

    /// Adapting α keeps the CE term's share of step 1 over the EMA of the steps so far: step 1
    /// and 2 train with α₁; a halved divergence lowers α by the EMA's 10%; the divergence
    /// weight of a τ schedule counts; the range and unusable steps are handled; and it refuses
    /// α₁ = 0 and a final α.
    #[test]
    fn adapted_alpha_keeps_the_share_of_the_labels() {
        let base = DistillLoss::hinton(2.0, 0.5);
        let adapt = KdSchedule { adapt_alpha: true, ..KdSchedule::default() };
        assert_eq!(adapt.next(&base, &[], 1, 10), base);
        let first = [logged(1, 0.8, 3.0)];
        assert_eq!(adapt.next(&base, &first, 2, 10).alpha, 0.5, "one step: its own share gives α₁");
        let halved = [logged(1, 0.8, 3.0), logged(2, 0.4, 3.0)];
        let a = adapt.next(&base, &halved, 3, 10).alpha as f64;
        assert!((a - 0.5 * 0.9).abs() < 1e-6, "EMA(w·D) = 0.9 of step 1's: {a}");
        let share = |a: f64, d: f64, c: f64| a * c / (d + a * c);
        let (s1, d, c) = (share(0.5, 4.0 * 0.8, 3.0), 4.0 * (0.8 * 0.8 + 0.2 * 0.4), 3.0);
        assert!((share(a, d, c) - s1).abs() < 1e-6, "the share stays");
        // With τ annealed 2 → 1 the weight falls from 4 to 1: a divergence that rises to keep
        // w·D fixed leaves α as it was.
        let annealed = KdSchedule { tau_end: Some(1.0), ..adapt };
        let w2 = annealed.at(&base, 2, 10).kl_coef as f64;
        let steady = [logged(1, 0.8, 3.0), logged(2, 0.8 * 4.0 / w2, 3.0)];
        assert!((annealed.next(&base, &steady, 3, 10).alpha - 0.5).abs() < 1e-6);
        assert!(annealed.next(&base, &steady, 3, 10).tau < 2.0, "τ still follows its schedule");
        // A collapsing divergence stops at α₁/100; a NaN step (skipped) is left out.
        let mut collapse: Vec<StepLog> = vec![logged(1, 0.8, 3.0)];
        collapse.extend((2..60).map(|i| logged(i, 1e-12, 3.0)));
        assert!((adapt.next(&base, &collapse, 60, 60).alpha as f64 - 0.5 / ADAPT_RANGE).abs() < 1e-9);
        let with_nan = [logged(1, 0.8, 3.0), logged(2, f64::NAN, 3.0)];
        assert_eq!(adapt.next(&base, &with_nan, 3, 10).alpha, 0.5);
        assert!(adapt.check(Some(&DistillLoss::hinton(2.0, 0.0))).is_err(), "α₁ = 0");
        assert!(KdSchedule { alpha_end: Some(0.1), ..adapt }.check(Some(&base)).is_err());
        assert!(adapt.check(Some(&base)).is_ok());
        assert_eq!(adapt.eval_loss(&base, 10), base, "held out with α₁");
    }

    /// Adapting τ: τ₁ until there is a divergence to go on, then the target plus the share of
    /// the way left that the EMA of the divergence keeps of step 1's (a halved divergence moves
    /// τ 4 → 1 by 10% of the way); the weight follows τ²; a divergence at or above step 1's
    /// holds τ₁; α adapts over the weights each step trained with; held out at the target.
    #[test]
    fn adapted_tau_follows_the_divergence() {
        let base = DistillLoss::hinton(4.0, 0.5);
        let adapt = KdSchedule { adapt_tau: true, ..KdSchedule::default() };
        assert_eq!(adapt.next(&base, &[], 1, 10), base);
        assert_eq!(adapt.at(&base, 7, 10), base, "no step-count schedule when τ adapts");
        assert_eq!(adapt.next(&base, &[logged(1, 0.8, 3.0)], 2, 10), base, "EMA(D) = D₁");
        let halved = [logged(1, 0.8, 3.0), logged(2, 0.4, 3.0)];
        let l = adapt.next(&base, &halved, 3, 10);
        let tau = 1.0 + 3.0 * 0.9;
        assert!((l.tau as f64 - tau).abs() < 1e-6, "{l:?}");
        assert!((l.kl_coef as f64 - tau * tau).abs() < 1e-4, "{l:?}");
        assert_eq!(l.alpha, 0.5);
        let worse = [logged(1, 0.8, 3.0), logged(2, 5.0, 3.0)];
        assert_eq!(adapt.next(&base, &worse, 3, 10).tau, 4.0, "held at τ₁");
        let to_two = KdSchedule { tau_end: Some(2.0), ..adapt };
        assert!((to_two.next(&base, &halved, 3, 10).tau as f64 - (2.0 + 2.0 * 0.9)).abs() < 1e-6);
        assert_eq!(to_two.eval_loss(&base, 10).tau, 2.0);
        assert_eq!(adapt.eval_loss(&base, 10), DistillLoss::hinton(1.0, 0.5));
        // Both adapting: step 3's α weighs step 2's divergence by the τ² step 2 trained with.
        let both = KdSchedule { adapt_alpha: true, ..adapt };
        let three = [logged(1, 0.8, 3.0), logged(2, 0.4, 3.0), logged(3, 0.4, 3.0)];
        let l4 = both.next(&base, &three, 4, 10);
        let (w1, w3) = (16.0, tau * tau);
        let s = 0.5 * 3.0 / (w1 * 0.8 + 0.5 * 3.0);
        let ewd = 0.8 * (0.8 * w1 * 0.8 + 0.2 * w1 * 0.4) + 0.2 * w3 * 0.4;
        assert!((l4.alpha as f64 - s / (1.0 - s) * ewd / 3.0).abs() < 1e-5, "{l4:?}");
        assert!(adapt.check(Some(&DistillLoss::hinton(1.0, 0.5))).is_err(), "τ₁ is the target");
        assert!(both.check(Some(&base)).is_ok());
    }
}
