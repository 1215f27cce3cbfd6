//! `recur demo` and `recur gradflow` end to end on a tiny budget: the report files exist and say
//! what they should.

use crate::recur;

#[test]
fn demo_writes_its_report() {
    let out = std::env::temp_dir().join(format!("recur-cli-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = recur(&[
        "demo",
        "--steps",
        "30",
        "--seq-len",
        "12",
        "--hidden",
        "8",
        "--batch",
        "8",
        "--cell",
        "rnn,gru",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    for needle in [
        "rnn +clip",
        "gru",
        "budget per model: 30 steps x batch 8, hidden 8",
        "||dL/dh_1||",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks `{needle}`:\n{summary}"
        );
    }
    let csv = std::fs::read_to_string(out.join("gradient_flow.csv")).unwrap();
    // header + 2 cells x (init, trained) x 12 steps
    assert_eq!(csv.lines().count(), 1 + 2 * 2 * 12);
    let loss = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert!(loss.starts_with("cell,clipped,step,val_mse"));
    for svg in ["loss.svg", "gradient_flow.svg"] {
        let s = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(s.starts_with("<svg") && s.contains("<polyline"), "{svg}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn gradflow_shows_the_rnn_gradient_vanishing_faster_than_the_lstm_at_init() {
    let out = std::env::temp_dir().join(format!("recur-cli-gradflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = recur(&[
        "gradflow",
        "--cell",
        "rnn,lstm",
        "--seq-len",
        "40",
        "--hidden",
        "16",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(out.join("gradient_flow.csv")).unwrap();
    let at = |cell: &str, t: usize| -> f64 {
        csv.lines()
            .find(|l| l.starts_with(&format!("{cell},init,{t},")))
            .and_then(|l| l.rsplit(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // relative decay from the last step back to the first
    let rnn = at("rnn", 1) / at("rnn", 40);
    let lstm = at("lstm", 1) / at("lstm", 40);
    assert!(rnn < 1e-3, "rnn ratio {rnn}");
    assert!(lstm > rnn, "lstm {lstm} vs rnn {rnn}");
    let bad = recur(&["gradflow", "--seq-len", "1", "--out", out.to_str().unwrap()]);
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&out);
}
