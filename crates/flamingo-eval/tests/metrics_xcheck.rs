//! Agreement with the reference Python implementations, on fixtures the Python produced
//! (generator scripts: see README.md, "Cross-check"). No Python or Java needed here.

use flamingo_eval::metrics;
use serde_json::Value;

const TOL: f64 = 1e-4;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn ptb_tokenizer_matches_stanford_corenlp() {
    let fx = load("xcheck_ptb.json");
    let captions = strings(&fx["captions"]);
    let expected = strings(&fx["tokenized"]);
    let got = metrics::ptb::tokenize_captions(&captions);
    let bad: Vec<_> = captions
        .iter()
        .zip(&expected)
        .zip(&got)
        .filter(|((_, e), g)| e != g)
        .map(|((c, e), g)| format!("{c:?}\n  java: {e:?}\n  rust: {g:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        captions.len(),
        bad.join("\n")
    );
}

#[test]
fn cider_matches_pycocoevalcap() {
    let fx = load("xcheck_cider.json");
    let refs: Vec<Vec<String>> = fx["refs"].as_array().unwrap().iter().map(strings).collect();
    let preds = strings(&fx["preds"]);

    // Tokenization of the same streams pycocoevalcap tokenized.
    let flat: Vec<String> = refs.iter().flatten().cloned().collect();
    let tok_flat = metrics::ptb::tokenize_captions(&flat);
    let expected_refs: Vec<String> = fx["tokenized_refs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(strings)
        .collect();
    assert_eq!(tok_flat, expected_refs);
    assert_eq!(
        metrics::ptb::tokenize_captions(&preds),
        strings(&fx["tokenized_preds"])
    );

    let (score, per_item) = metrics::coco_cider(&refs, &preds);
    let expected = fx["cider"].as_f64().unwrap();
    assert!(
        (score - expected).abs() < TOL,
        "CIDEr {score} vs pycocoevalcap {expected}"
    );
    for (i, (a, b)) in per_item.iter().zip(floats(&fx["per_item"])).enumerate() {
        assert!((a - b).abs() < TOL, "image {i}: {a} vs {b}");
    }
}

#[test]
fn vqa_accuracy_matches_official_eval() {
    let fx = load("xcheck_vqa.json");
    let answers: Vec<Vec<String>> = fx["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    let preds = strings(&fx["preds"]);
    let (acc, per_item) = metrics::vqa_accuracy_percent(&answers, &preds);
    let expected = fx["accuracy"].as_f64().unwrap();
    assert!(
        (acc - expected).abs() < TOL,
        "accuracy {acc} vs official {expected}"
    );
    for (i, (a, b)) in per_item.iter().zip(floats(&fx["per_item"])).enumerate() {
        assert!(
            (a - b).abs() < TOL,
            "question {i} ({:?} vs {:?}): {a} vs {b}",
            preds[i],
            answers[i]
        );
    }
}
