//! Training the detector's learned stage and choosing its threshold, shared by the trainer
//! (`train_detector.rs`, which writes the shipped model) and the cross-writer evaluation
//! (`detector_cv.rs`, which trains the same way without one writer and reads that writer),
//! so what is measured is what ships.
//!
//! Reproducible: fixed seed, fixed order, no threads. Prints nothing.

use std::collections::BTreeMap;

use crate::eval_sets::{CRISIS_CATEGORIES, EvalText};
use tandem_clinical::{LearnedModel, MODEL_BUCKETS, MODEL_CLASSES, ModelReading, Vocabulary};

// Chosen across writers (`detector_cv`: trained without one writer, read on that writer),
// 2026-12-01: a strong L2 and a small step generalise best.
const EPOCHS: usize = 30;
const LEARNING_RATE: f32 = 0.1;
/// L2 penalty, applied to the weights an example touches.
const L2: f32 = 1e-3;
const SEED: u64 = 0x7a6d_2026_1201;
/// How much each sentence of a benign text counts as a benign example
/// of its own, beside the whole text: the model reads every sentence of a text on its own,
/// so it learns that a sentence of a benign text is benign too.
const BENIGN_PASSAGE_WEIGHT: f32 = 0.5;
/// The share of the dev split's benign texts the model may add to the vocabulary's false
/// alarms. The vocabulary's own false alarms are most of the 0.05 target, and on writers it
/// never saw the model adds about twice what it adds on the dev split: at 0.005, leaving one
/// writer out (`detector_cv`, 2026-12-01) gave false alarms 0.037 on the clean folds (0.032 of
/// them the vocabulary's) and 0.056 over all (0.046), where 0.01 gave 0.048 and 0.063 for
/// 2.5 points more recall. The lower one leaves the holdout room under 0.05.
pub const MAX_ADDED_DEV_FALSE_ALARMS: f64 = 0.005;

/// A labelled text as the learned stage reads it.
pub struct Read {
    pub text: EvalText,
    pub reading: ModelReading,
}

/// Reads every text once (the vocabulary, then the passages the model reads).
pub fn read(vocabulary: &Vocabulary, texts: Vec<EvalText>) -> Vec<Read> {
    texts.into_iter().map(|text| Read { reading: vocabulary.model_reading(&text.text), text }).collect()
}

fn class_of(category: &str) -> usize {
    MODEL_CLASSES.iter().position(|name| *name == category).expect("a category of the model")
}

struct Example<'a> {
    features: &'a [u32],
    class: usize,
    weight: f32,
}

fn examples<'a>(texts: &[&'a Read]) -> Vec<Example<'a>> {
    let mut out = Vec::new();
    for read in texts {
        let class = class_of(&read.text.category);
        for passage in &read.reading.passages {
            if passage.whole {
                out.push(Example { features: &passage.features, class, weight: 1.0 });
            } else if !read.text.crisis {
                out.push(Example { features: &passage.features, class, weight: BENIGN_PASSAGE_WEIGHT });
            }
        }
    }
    out
}

/// Class scores of `features` (softmax taken), into `scores`.
fn forward(features: &[u32], bias: &[f32], weights: &[f32], scores: &mut [f32]) {
    let classes = scores.len();
    let x = 1.0 / (features.len().max(1) as f32).sqrt();
    scores.copy_from_slice(bias);
    for feature in features {
        let row = *feature as usize * classes;
        for (class, score) in scores.iter_mut().enumerate() {
            *score += weights[row + class] * x;
        }
    }
    softmax(scores);
}

fn softmax(scores: &mut [f32]) {
    let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for score in scores.iter_mut() {
        *score = (*score - top).exp();
        total += *score;
    }
    for score in scores.iter_mut() {
        *score /= total;
    }
}

/// Multinomial logistic regression by AdaGrad over the examples in a seeded order: the model
/// with threshold 0.5 (choose one with [`choose_threshold`]).
pub fn train(vocabulary: &Vocabulary, texts: &[&Read]) -> LearnedModel {
    let examples = examples(texts);
    let classes = MODEL_CLASSES.len();
    let mut weights = vec![0f32; MODEL_BUCKETS * classes];
    let mut squares = vec![1e-6f32; MODEL_BUCKETS * classes];
    let mut bias = vec![0f32; classes];
    let mut bias_squares = vec![1e-6f32; classes];
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut state = SEED;
    let mut scores = vec![0f32; classes];
    for _ in 0..EPOCHS {
        // Fisher-Yates with xorshift64.
        for index in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(index, (state % (index as u64 + 1)) as usize);
        }
        for &at in &order {
            let example = &examples[at];
            let features = example.features;
            let x = 1.0 / (features.len().max(1) as f32).sqrt();
            forward(features, &bias, &weights, &mut scores);
            for class in 0..classes {
                let target = if class == example.class { 1.0 } else { 0.0 };
                let gradient = (scores[class] - target) * example.weight;
                bias_squares[class] += gradient * gradient;
                bias[class] -= LEARNING_RATE * gradient / bias_squares[class].sqrt();
                for feature in features {
                    let slot = *feature as usize * classes + class;
                    let g = gradient * x + L2 * weights[slot];
                    squares[slot] += g * g;
                    weights[slot] -= LEARNING_RATE * g / squares[slot].sqrt();
                }
            }
        }
    }
    LearnedModel::from_weights(0.5, vocabulary.fingerprint(), bias, &weights)
}

/// Each text's crisis probability under `model` where it may add a finding (see
/// [`LearnedModel::crisis`]); below every threshold where it may not.
pub fn crisis(model: &LearnedModel, texts: &[&Read]) -> Vec<f32> {
    texts.iter().map(|read| model.crisis(&read.reading).unwrap_or(f32::NEG_INFINITY)).collect()
}

/// Per category (flagged, texts), crisis and benign, when a text is flagged by the vocabulary
/// or by the model at `threshold`.
pub fn tally(texts: &[&Read], crisis: &[f32], threshold: f32) -> BTreeMap<(String, String), (usize, usize)> {
    let mut cells: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for (read, probability) in texts.iter().zip(crisis) {
        let flagged = read.reading.vocabulary_flagged || *probability >= threshold;
        let cell = cells.entry((read.text.category.clone(), read.text.lang.clone())).or_default();
        cell.0 += usize::from(flagged);
        cell.1 += 1;
    }
    cells
}

/// (flagged, texts) over the benign categories of a tally.
pub fn benign(cells: &BTreeMap<(String, String), (usize, usize)>) -> (usize, usize) {
    cells
        .iter()
        .filter(|((category, _), _)| !CRISIS_CATEGORIES.contains(&category.as_str()))
        .fold((0, 0), |sum, (_, cell)| (sum.0 + cell.0, sum.1 + cell.1))
}

/// The lowest threshold (step 0.005) at which the model adds at most
/// [`MAX_ADDED_DEV_FALSE_ALARMS`] of the benign dev texts to the vocabulary's false alarms;
/// 0.995 when none does.
pub fn choose_threshold(dev: &[&Read], dev_crisis: &[f32]) -> f32 {
    let mut threshold = 0.995f32;
    let (alone, _) = benign(&tally(dev, dev_crisis, f32::INFINITY));
    for step in (1..200).rev() {
        let candidate = step as f32 * 0.005;
        let (flagged, texts) = benign(&tally(dev, dev_crisis, candidate));
        if (flagged - alone) as f64 / texts.max(1) as f64 > MAX_ADDED_DEV_FALSE_ALARMS {
            break;
        }
        threshold = candidate;
    }
    threshold
}

/// Trains on `train`, chooses the threshold on `dev`: the shipped model's recipe.
pub fn train_with_threshold(vocabulary: &Vocabulary, train: &[&Read], dev: &[&Read]) -> LearnedModel {
    let mut model = self::train(vocabulary, train);
    model.threshold = choose_threshold(dev, &crisis(&model, dev));
    model
}
