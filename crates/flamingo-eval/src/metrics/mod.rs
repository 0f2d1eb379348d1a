//! Metrics re-implemented from the reference Python: CIDEr-D on PTB-tokenized captions
//! (pycocoevalcap) and the official VQA accuracy (vqaEval.py).

pub mod cider;
pub mod ptb;
pub mod vqa;

/// COCO captioning CIDEr the way OpenFlamingo's eval computes it (pycocoevalcap's
/// `COCOEvalCap`: PTB-tokenize references and predictions, then CIDEr-D), x100 like the card.
/// Returns the corpus score and per-item scores (x100 too).
pub fn coco_cider<S: AsRef<str>, T: AsRef<str>>(refs: &[Vec<S>], preds: &[T]) -> (f64, Vec<f64>) {
    // pycocoevalcap tokenizes all references in one stream and all predictions in another.
    let flat_refs: Vec<&str> = refs.iter().flatten().map(|s| s.as_ref()).collect();
    let tok_flat = ptb::tokenize_captions(&flat_refs);
    let mut it = tok_flat.into_iter();
    let tok_refs: Vec<Vec<String>> = refs
        .iter()
        .map(|rs| it.by_ref().take(rs.len()).collect())
        .collect();
    let tok_preds = ptb::tokenize_captions(preds);
    let (score, per_item) = cider::cider_d(&tok_refs, &tok_preds);
    (
        score * 100.0,
        per_item.into_iter().map(|s| s * 100.0).collect(),
    )
}

/// VQA accuracy in percent (mean of per-question accuracies), plus the per-question values.
pub fn vqa_accuracy_percent<S: AsRef<str>, T: AsRef<str>>(
    answers: &[Vec<S>],
    preds: &[T],
) -> (f64, Vec<f64>) {
    let per: Vec<f64> = preds
        .iter()
        .zip(answers)
        .map(|(p, gts)| vqa::vqa_accuracy(p.as_ref(), gts) * 100.0)
        .collect();
    let mean = if per.is_empty() {
        0.0
    } else {
        per.iter().sum::<f64>() / per.len() as f64
    };
    (mean, per)
}
