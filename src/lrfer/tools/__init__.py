"""What is built on a trained run, beside training: export (ONNX / TorchScript), CPU latency, the predictor
that ``lrfer-predict`` and the benches use, model statistics (parameters, MACs), faces in photos and videos
(``lrfer-predict --detect``), and launching runs side by side (the leaderboard, findings and calibration
scripts)."""
