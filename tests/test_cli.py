import json

from diffusion_classifiers import DiffusionClassifierPipeline
from diffusion_classifiers.cli import main


def test_demo_writes_report_metrics_plots_and_a_loadable_pipeline(tmp_path, capsys):
    main([
        "demo", "--output_dir", str(tmp_path), "--image_size", "8", "--unet_preset", "tiny", "--max_train_steps", "6",
        "--lr_warmup_steps", "1", "--timesteps", "10", "100",
    ])  # fmt: skip
    for name in ("report.md", "metrics.json", "probe_heatmap.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["probe_grid"]) == 7 * 2  # every block x every timestep
    summary = metrics["summary"]
    assert (summary["best_block"], summary["best_timestep"]) in {(r["block"], r["timestep"]) for r in metrics["probe_grid"]}
    assert 0.0 <= summary["kmeans_nmi"] <= 1.0 and summary["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    pipe = DiffusionClassifierPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert pipe.class_names == [str(i) for i in range(10)]
    printed = capsys.readouterr().out
    assert "chosen" in printed and "| block |" in printed
